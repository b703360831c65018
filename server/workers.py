"""`camserve serve --workers N`: N full servers on one port, each with its own
event loop, batchers and copy of every model, as Triton's instance count and
KServe's workers do. The request path is Python and one process runs it on one
core (benchmarks/README.md section 6); this is how it runs on N. Why N full
servers rather than N front ends feeding one model process: section 7 there.

This process, the supervisor, never imports TensorFlow nor creates a gRPC
object. It starts the workers as fresh interpreters (nothing inherited from a
fork), serves their Prometheus metrics summed (prometheus-client's
multiprocess mode), passes SIGTERM on so each one drains, and restarts a
worker that dies once all have served. A worker loads and warms up its models,
says so over its link (a socket pair), and opens the shared port
(SO_REUSEPORT) when the supervisor answers, which is once every worker is
warm: the kernel then spreads the first connections over all of them, not onto
the first one ready, and a connection stays with the worker it reached. A
worker whose supervisor has gone drains and exits.

The machinery is ours because no library in our dependencies supervises
grpc.aio servers; the pieces are the standard library's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import cpus
from .logs import configure_logging

log = logging.getLogger("camserve.workers")

WARM, GO = b"W", b"G"
RESTART_BACKOFF, MAX_RESTART_BACKOFF = 1.0, 30.0
STEADY_S = 60.0  # a worker that lived this long restarts without backoff


class Link:
    """A worker's end of its socket pair to the supervisor."""

    def __init__(self, fd: int, index: int):
        self.socket = socket.socket(fileno=fd)
        self.socket.setblocking(False)
        self.index = index

    async def warm(self) -> bool:
        """Say this worker is warm; True once the supervisor says to listen, False
        if it has gone."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.socket, WARM)
        return await loop.sock_recv(self.socket, 1) == GO

    async def closed(self):
        """Returns when the supervisor has gone (its end of the pair closed)."""
        while await asyncio.get_running_loop().sock_recv(self.socket, 1):
            pass


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process
    link: socket.socket
    started: float
    warm: bool = False


class Supervisor:
    def __init__(self, options, count: int):
        self.count = count
        self.state = Path(tempfile.mkdtemp(prefix="camserve-workers-"))
        metrics = self.state / "metrics"
        metrics.mkdir()
        # Read by prometheus-client when a worker first imports it, and by the collector here.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
        share = max(1, cpus.available() // count)
        self.options = replace(
            options,
            decode_threads=options.decode_threads or share,
            intra_op_threads=options.intra_op_threads or share,
            inter_op_threads=options.inter_op_threads or share,
        )
        self.options_file = self.state / "options.pickle"
        self.options_file.write_bytes(pickle.dumps(self.options))
        self.workers: dict[int, Worker] = {}
        self.all_warm = False
        self.stopping = asyncio.Event()

    def _serve_metrics(self):
        from prometheus_client import start_http_server

        from .metrics import summed_registry

        start_http_server(self.options.metrics_port, addr=self.options.metrics_host, registry=summed_registry())

    async def _spawn(self, index: int) -> Worker:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "camserve.server.workers", str(self.options_file), str(index), str(theirs.fileno()),
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        log.info("worker %d started (pid %d)", index, process.pid, extra={"worker": index})
        worker = self.workers[index] = Worker(index, process, ours, time.monotonic())
        return worker

    async def _answer(self, worker: Worker):
        """Tell a warm worker to listen: at once after the start, else when all are warm."""
        loop = asyncio.get_running_loop()
        if await loop.sock_recv(worker.link, 1) != WARM:
            return  # it died while warming up; its exit is handled elsewhere
        worker.warm = True
        if not self.all_warm and all(w.warm for w in self.workers.values()):
            self.all_warm = True
            log.info("all %d workers warm: listening", self.count)
            for each in self.workers.values():
                await loop.sock_sendall(each.link, GO)
        elif self.all_warm:
            await loop.sock_sendall(worker.link, GO)

    async def _run_worker(self, index: int) -> int | None:
        """Keeps worker `index` running until the supervisor stops. Its exit code
        when it fails before all workers are warm (the server cannot start)."""
        from prometheus_client import multiprocess

        backoff = RESTART_BACKOFF
        while True:
            worker = await self._spawn(index)
            answer = asyncio.create_task(self._answer(worker))
            code = await worker.process.wait()
            answer.cancel()
            worker.link.close()
            multiprocess.mark_process_dead(worker.process.pid)
            if self.stopping.is_set():
                return code
            if not self.all_warm:
                log.error("worker %d exited with %d before serving: stopping", index, code, extra={"worker": index})
                return code or 1
            lived = time.monotonic() - worker.started
            backoff = RESTART_BACKOFF if lived > STEADY_S else min(2 * backoff, MAX_RESTART_BACKOFF)
            log.warning("worker %d exited with %d: restarting in %.0f s", index, code, backoff, extra={"worker": index})
            try:
                await asyncio.wait_for(self.stopping.wait(), backoff)
                return 0
            except TimeoutError:
                pass

    def _stop(self, signum):
        log.info("received %s: draining %d workers", signal.Signals(signum).name, self.count)
        self.stopping.set()
        for worker in self.workers.values():
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGTERM)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop, signum)
        if self.options.metrics_port:
            self._serve_metrics()
        log.info("%d workers on port %d, %d thread(s) each", self.count, self.options.port, self.options.intra_op_threads)
        runs = [asyncio.create_task(self._run_worker(i)) for i in range(self.count)]
        done, _ = await asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED)
        first = next(iter(done)).result()
        if not self.stopping.is_set():  # a worker could not start: take the others down
            self._stop(signal.SIGTERM)
        codes = [first, *await asyncio.gather(*(r for r in runs if r not in done))]
        log.info("stopped", extra={"exit_codes": codes})
        return next((c for c in codes if c), 0)


def supervise(options, count: int) -> int:
    configure_logging()
    return asyncio.run(Supervisor(options, count).run())


def main(argv: list[str]) -> int:
    """A worker: `python -m camserve.server.workers OPTIONS_FILE INDEX FD`."""
    from .app import serve

    options_file, index, fd = argv
    options = pickle.loads(Path(options_file).read_bytes())
    return serve(options, Link(int(fd), int(index)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
