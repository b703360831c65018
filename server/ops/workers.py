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

A worker's options, bearer token included, travel over its link, never through
a file, its argv or its environment. The supervisor's state folder (the
metrics files) goes when it exits; one left by a supervisor that was killed
goes at the next start.

The machinery is ours because no library in our dependencies supervises
grpc.aio servers; the pieces are the standard library's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from . import cpus
from .link import GO, LENGTH, WARM
from .logs import configure_logging

log = logging.getLogger("camserve.workers")

STATE_PREFIX = "camserve-supervisor-"
RESTART_BACKOFF, MAX_RESTART_BACKOFF = 1.0, 30.0
STEADY_S = 60.0  # a worker that lived this long restarts without backoff



@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process
    link: socket.socket
    started: float
    warm: bool = False


def remove_abandoned_state():
    """Remove the state folders of supervisors that died without removing them
    (SIGKILL, a crash). A supervisor holds a lock on its folder for its life and
    the kernel drops it with the process, so a folder we can lock is abandoned,
    whatever pid namespace its supervisor ran in and however pids were reused.
    Its supervisor creates `metrics` only once it holds the lock: a folder without
    it may be one another supervisor is just making, and stays."""
    for path in Path(tempfile.gettempdir()).glob(STATE_PREFIX + "*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            if os.fstat(fd).st_uid == os.getuid() and (path / "metrics").is_dir():
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed %s, left by a supervisor that was killed", path)
        except BlockingIOError:
            pass  # its supervisor is running
        finally:
            os.close(fd)


class Supervisor:
    def __init__(self, options, count: int):
        self.count = count
        remove_abandoned_state()
        self.state = Path(tempfile.mkdtemp(prefix=STATE_PREFIX))
        # Never closed: the lock lasts as long as this process (see remove_abandoned_state).
        fcntl.flock(os.open(self.state, os.O_RDONLY | os.O_DIRECTORY), fcntl.LOCK_EX)
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
        pickled = pickle.dumps(self.options)
        self.handoff = LENGTH.pack(len(pickled)) + pickled
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
            sys.executable, "-m", "camserve.server.worker", str(index), str(theirs.fileno()),
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        log.info("worker %d started (pid %d)", index, process.pid, extra={"worker": index})
        worker = self.workers[index] = Worker(index, process, ours, time.monotonic())
        if self.stopping.is_set():  # _stop ran before this worker was in self.workers
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(ConnectionError):  # it died at once; _run_worker sees it exit
            await asyncio.get_running_loop().sock_sendall(ours, self.handoff)
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
    supervisor = Supervisor(options, count)
    try:
        return asyncio.run(supervisor.run())
    finally:
        shutil.rmtree(supervisor.state, ignore_errors=True)
