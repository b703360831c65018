"""`camserve serve`: the process. Start listening (health NOT_SERVING), load and
warm up every model, report SERVING; on SIGTERM/SIGINT report NOT_SERVING,
finish what was accepted, exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from camserve.kserve import grpc_predict_v2_pb2, grpc_predict_v2_pb2_grpc
from camserve.v1 import camserve_pb2, camserve_pb2_grpc

from .batcher import BatchingOptions
from .device import select_device
from .handler import Handler, Limits
from .kserve import KServeService
from .logs import configure_logging
from .metrics import Metrics
from .security import SecurityOptions
from .lifecycle import ModelManager, VersionPolicy
from .models import Registry
from .service import CamServeService

log = logging.getLogger("camserve.server")

SERVICE_NAME = camserve_pb2.DESCRIPTOR.services_by_name["CamServe"].full_name
KSERVE_NAME = grpc_predict_v2_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


@dataclass
class ServerOptions:
    repo: Path
    models: list[str] | None = None
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    security: SecurityOptions = field(default_factory=SecurityOptions)
    poll_seconds: float = 5.0  # how often the repository is checked for versions; 0: never
    host: str = "0.0.0.0"
    port: int = 8500
    metrics_port: int = 8501  # 0: no metrics endpoint
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    limits: Limits = field(default_factory=Limits)
    max_message_bytes: int = 64 * 1024 * 1024
    decode_threads: int = max(2, os.cpu_count() or 2)
    shutdown_delay: float = 1.0  # keep answering after SIGTERM so balancers see NOT_SERVING
    drain_timeout: float = 30.0


class Server:
    def __init__(self, options: ServerOptions):
        self.options = options
        self.metrics = Metrics()
        self.registry = Registry()
        self.health = health_aio.HealthServicer()
        self.decoders = ThreadPoolExecutor(options.decode_threads, thread_name_prefix="decode")
        self.handler = Handler(self.registry, self.decoders, options.limits, self.metrics)
        self.stopping = asyncio.Event()
        limit = options.max_message_bytes
        self.grpc = grpc.aio.server(
            interceptors=options.security.interceptors(),
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        camserve_pb2_grpc.add_CamServeServicer_to_server(CamServeService(self.registry, self.handler), self.grpc)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            KServeService(self.registry, self.handler), self.grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection([SERVICE_NAME, KSERVE_NAME, health_name, reflection.SERVICE_NAME], self.grpc)

    async def _set_health(self, status):
        for service in ("", SERVICE_NAME, KSERVE_NAME):
            await self.health.set(service, status)

    def _on_signal(self, signum):
        log.info("received %s: draining", signal.Signals(signum).name)
        self.stopping.set()

    async def run(self) -> int:
        opts = self.options
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{opts.host}:{opts.port}"
        credentials = opts.security.credentials()
        bound = self.grpc.add_secure_port(address, credentials) if credentials else self.grpc.add_insecure_port(address)
        if not bound:
            raise OSError(f"cannot listen on {address}")
        await self.grpc.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        if opts.metrics_port:
            self.metrics.serve(opts.metrics_port)
        security = ("mutual TLS" if opts.security.client_ca else "TLS") if credentials else "plaintext"
        auth = "bearer token" if opts.security.token else "no authentication"
        log.info("listening on %s (%s, %s; metrics on :%s); NOT_SERVING until warm-up ends", address, security, auth, opts.metrics_port)

        self.manager = ModelManager(
            opts.repo, opts.models, opts.version_policy, self.registry, select_device(), opts.batching, self.metrics
        )
        loader = asyncio.create_task(self.manager.sync())
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({loader, stop}, return_when=asyncio.FIRST_COMPLETED)
        watcher = None
        if loader.done() and not self.stopping.is_set():
            loader.result()  # an unreadable repository stops the server here
            if not self.registry.all():
                raise RuntimeError(f"no model in {opts.repo} could be loaded; see the log lines above")
            self.registry.loaded = True
            if opts.poll_seconds:
                watcher = asyncio.create_task(self.manager.watch(opts.poll_seconds))
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)
            served = ", ".join(f"{m.name} v{m.version}" for m in self.registry.all())
            log.info("SERVING %s", served)
            await self.stopping.wait()
        await self._drain(loader, watcher)
        return 0

    async def _drain(self, *tasks: asyncio.Task | None):
        self.registry.draining = True
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        for task in tasks:
            if task:
                task.cancel()
        await asyncio.sleep(self.options.shutdown_delay)
        # New calls are refused with UNAVAILABLE from here (clients retry elsewhere);
        # accepted ones finish within the drain timeout, then the listener closes.
        self.registry.refusing = True
        started = time.monotonic()
        if not await self.handler.wait_idle(self.options.drain_timeout):
            log.warning("drain timeout: %d call(s) still in flight are cut off", self.handler.in_flight)
        await self.grpc.stop(grace=max(0.0, self.options.drain_timeout - (time.monotonic() - started)))
        await self.manager.close()
        self.decoders.shutdown(wait=False)
        log.info("stopped")


def serve(options: ServerOptions) -> int:
    configure_logging()

    async def main():
        # grpc.aio binds its server to the running loop: create it inside.
        return await Server(options).run()

    return asyncio.run(main())
