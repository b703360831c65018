"""`camserve serve`: the process. Start listening (health NOT_SERVING), load and
warm up every model, report SERVING; on SIGTERM/SIGINT report NOT_SERVING,
finish what was accepted, exit (phases in ops/phase.py).

Health has two meanings, as Kubernetes probes want: readiness ("", and each
API's service name) is SERVING only between warm-up and drain; liveness
(LIVENESS) is SERVING while the process can answer, through a slow warm-up and
a drain, and turns NOT_SERVING only when a batcher has died, so that a restart
can help."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from camserve.kserve import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from camserve.v1 import camserve_pb2, camserve_pb2_grpc

from .models.lifecycle import ModelManager
from .models.registry import Registry
from .ops import cpus, loop_lag, phase
from .models.device import configure_threads, select_device
from .ops.link import Link
from .ops.phase import Phase
from .ops.logs import configure_logging
from .ops.metrics import Metrics
from .ops.observer import Observer
from .options import ServerOptions
from .pipeline.explain import Pipeline
from .transports.grpc.call_limit import CallLimit
from .transports.grpc.native import CamServeService
from .transports.http.server import HttpServer
from .transports.grpc.kserve import KServeService
from .transports.grpc.tfserving import ModelService, PredictionService
from .transports.kserve import KServe
from .transports.tfserving import TFServing

log = logging.getLogger("camserve.server")

LIVENESS = "camserve.liveness"
SERVICE_NAME = camserve_pb2.DESCRIPTOR.services_by_name["CamServe"].full_name
KSERVE_NAME = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
TFSERVING_NAMES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


class Server:
    def __init__(self, options: ServerOptions, link: Link | None = None):
        """`link`: this server is one of several workers on one port (ops/workers.py)."""
        self.options = options
        self.link = link
        self.metrics = Metrics(worker=str(link.index) if link else "0")
        self.phase = Phase()
        self.registry = Registry(self.phase)
        self.health = health_aio.HealthServicer()
        self.cpus = cpus.available()
        self.decoders = ThreadPoolExecutor(options.decode_threads or self.cpus, thread_name_prefix="decode")
        self.observer = Observer(self.metrics)
        self.pipeline = Pipeline(self.registry, self.decoders, options.limits, self.observer)
        self.stopping = asyncio.Event()
        self._background: set[asyncio.Task] = set()  # tasks nothing awaits: referenced so they are not collected
        limit = options.max_message_bytes
        self.grpc = grpc.aio.server(
            # The token first: a call it refuses never takes a place under the limit.
            interceptors=[*options.security.interceptors(), CallLimit(options.max_concurrent_rpcs)],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.max_connection_age_ms", int(options.max_connection_age * 1e3)),
                ("grpc.max_connection_age_grace_ms", int(options.max_connection_age_grace * 1e3)),
                # Workers share their port; a lone server must not share it with a stray one.
                ("grpc.so_reuseport", 1 if link else 0),
            ],
        )
        kserve = KServe(self.registry, self.pipeline)
        camserve_pb2_grpc.add_CamServeServicer_to_server(CamServeService(self.registry, self.pipeline), self.grpc)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(KServeService(kserve), self.grpc)
        tfserving = TFServing(self.registry, self.pipeline)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(tfserving), self.grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(tfserving), self.grpc)
        self.http = HttpServer(options, kserve, tfserving, self.pipeline, self.metrics) if options.http_port else None
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection([SERVICE_NAME, KSERVE_NAME, *TFSERVING_NAMES, health_name, reflection.SERVICE_NAME], self.grpc)

    async def _enter(self, new_phase: str):
        self.phase.current = new_phase
        await self._publish_health()

    async def _publish_health(self):
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set(LIVENESS, serving if self.phase.live else not_serving)
        for service in ("", SERVICE_NAME, KSERVE_NAME, *TFSERVING_NAMES):
            await self.health.set(service, serving if self.phase.ready else not_serving)

    def _on_crash(self, err: BaseException):
        """A batcher died: this process cannot serve that model any more; let probes
        restart it, or, for a worker, the supervisor."""
        self.phase.crashed = err
        self._in_background(self._publish_health())
        if self.link:
            self.stopping.set()

    def _on_signal(self, signum):
        log.info("received %s: draining", signal.Signals(signum).name)
        self.stopping.set()

    async def _listen(self):
        opts = self.options
        address = f"{opts.host}:{opts.port}"
        credentials = opts.security.credentials()
        bound = self.grpc.add_secure_port(address, credentials) if credentials else self.grpc.add_insecure_port(address)
        if not bound:
            raise OSError(f"cannot listen on {address}")
        await self.grpc.start()
        self.listening = True
        http = "off"
        if self.http:
            http = f"{opts.host}:{await self.http.start(opts.host, opts.http_port, shared=self.link is not None)}"
        security = ("mutual TLS" if opts.security.client_ca else "TLS") if credentials else "plaintext"
        auth = "bearer token" if opts.security.token else "no authentication"
        metrics = f"{opts.metrics_host}:{opts.metrics_port}" if opts.metrics_port else "off"
        log.info("listening on %s, HTTP on %s (%s, %s; metrics on %s)", address, http, security, auth, metrics)

    async def _start(self):
        """Load and warm up every model. A lone server listens from the start, so
        probes see it warming up; a worker opens the shared port once every worker
        is warm (ops/workers.py)."""
        await self.manager.sync()  # an unreadable repository stops the server here
        if not self.registry.all():
            raise RuntimeError(f"no model in {self.manager.sources} could be loaded; see the log lines above")
        if self.link:
            if not await self.link.warm():
                log.warning("the supervisor has gone: stopping")
                self.stopping.set()
                return
            await self._listen()
            self._in_background(self.link.closed()).add_done_callback(lambda _: self.stopping.set())

    def _in_background(self, work) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def run(self) -> int:
        opts = self.options
        await self._enter(phase.STARTING)
        self.listening = False
        if not self.link:
            await self._listen()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        lag = self._in_background(loop_lag.sample(self.metrics.loop_lag))
        if opts.metrics_port and not self.link:  # workers' metrics are served by their supervisor
            self.metrics.serve(opts.metrics_port, opts.metrics_host)

        threads = configure_threads(opts.intra_op_threads or self.cpus, opts.inter_op_threads or self.cpus)
        log.info("%d CPU(s) usable; %d decode threads; TensorFlow %s", self.cpus, self.decoders._max_workers, threads)
        self.manager = ModelManager(opts.sources(), opts.model_defaults, self.registry, select_device(), self.observer)
        self.manager.on_crash = self._on_crash
        loader = asyncio.create_task(self._start())
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({loader, stop}, return_when=asyncio.FIRST_COMPLETED)
        watcher = None
        if loader.done() and not self.stopping.is_set():
            loader.result()
            # One watcher for both: a pass looks for versions and, when its time has come, at the models.config.
            intervals = [s for s in (opts.poll_seconds, opts.model_config_poll_seconds) if s]
            if intervals:
                watcher = asyncio.create_task(self.manager.watch(min(intervals)))
            await self._enter(phase.SERVING)
            served = ", ".join(f"{m.name} v{m.version}" for m in self.registry.all())
            log.info("SERVING %s", served)
            await self.stopping.wait()
        await self._drain(loader, watcher, lag)
        return 3 if self.phase.crashed and self.link else 0

    async def _drain(self, *tasks: asyncio.Task | None):
        await self._enter(phase.DRAINING)
        for task in tasks:
            if task:
                task.cancel()
        await asyncio.sleep(self.options.shutdown_delay)
        # New calls are refused with UNAVAILABLE from here (clients retry elsewhere);
        # accepted ones finish within the drain timeout, then the listener closes.
        await self._enter(phase.STOPPING)
        started = time.monotonic()
        accepted = [self.pipeline.calls.wait_idle(), *([self.http.wait_idle()] if self.http else [])]
        try:
            await asyncio.wait_for(asyncio.gather(*accepted), self.options.drain_timeout)
        except TimeoutError:
            log.warning("drain timeout: %d call(s) still in flight are cut off", self.pipeline.calls.in_flight)
        if self.listening:
            grace = max(0.0, self.options.drain_timeout - (time.monotonic() - started))
            await asyncio.gather(self.grpc.stop(grace=grace), *([self.http.stop()] if self.http else []))
        await self.manager.close()
        self.decoders.shutdown(wait=False)
        log.info("stopped")


def serve(options: ServerOptions, link: Link | None = None) -> int:
    configure_logging(worker=link.index if link else None)

    async def main():
        # grpc.aio binds its server to the running loop: create it inside.
        return await Server(options, link).run()

    return asyncio.run(main())
