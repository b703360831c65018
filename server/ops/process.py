"""A `camserve serve` child process on loopback, for tests, benchmarks and scripts
that need a real server: start it, watch its health and metrics, stop it."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families


# The child is killed when the thread that started it ends, so a crashed caller
# (a pytest that segfaulted) leaves no server holding its ports and memory. By
# util-linux's setpriv, which sets it and execs the command: Popen's preexec_fn
# would run Python in the child of a threaded parent, which may deadlock there.
SETPRIV = shutil.which("setpriv")
LIFELINE = (SETPRIV, "--pdeathsig", "KILL") if SETPRIV else ()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`camserve serve --repo REPO ARGS...` on free loopback ports. `repo` may instead be
    the flags that name the models (("--model-config-file", FILE), ...)."""

    def __init__(
        self,
        repo: Path | tuple[str, ...],
        log: Path,
        *args: str,
        command: list[str] | None = None,
        port: int | None = None,
        credentials=None,
        metrics_host: str = "127.0.0.1",
        prefix: tuple[str, ...] = (),  # e.g. ("taskset", "-c", "0") to pin the server
        launcher: tuple[str, ...] | None = None,  # what runs `camserve` (default: python -m camserve)
    ):
        self.port, self.metrics_port, self.http_port = port or free_port(), free_port(), free_port()
        self.metrics_host = metrics_host
        self.target = f"127.0.0.1:{self.port}"
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.log = log
        if command is None:
            models = ["--repo", str(repo)] if isinstance(repo, (str, Path)) else list(repo)
            command = [*prefix, *(launcher or (sys.executable, "-m", "camserve")), "serve", *models, "--host", "127.0.0.1"]
            command += ["--port", str(self.port), "--metrics-port", str(self.metrics_port), "--metrics-host", metrics_host]
            command += ["--http-port", str(self.http_port), *args]
        self.process = subprocess.Popen([*LIFELINE, *command], stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        # Reconnect quickly: the default backoff (1 s and growing) would miss the warm-up window.
        fast = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.min_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100)]
        self.channel = (
            grpc.secure_channel(self.target, credentials, options=fast) if credentials else grpc.insecure_channel(self.target, options=fast)
        )
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def health(self, service: str = "") -> str | None:
        """SERVING / NOT_SERVING, or None when the server does not answer."""
        try:
            response = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
        except grpc.RpcError:
            return None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def wait_for(self, status: str, timeout: float = 180.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.health() == status:
                return
            time.sleep(0.05)
        raise TimeoutError(f"server not {status} after {timeout}s:\n{self.log_tail()}")

    def metrics(self) -> dict[tuple, float]:
        """{(sample name, sorted labels): value}"""
        text = urllib.request.urlopen(f"http://{self.metrics_host}:{self.metrics_port}/metrics", timeout=5).read().decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def metric(self, name: str, **labels) -> float:
        """Sum of a sample over the series whose labels include `labels`."""
        return sum(v for (n, ls), v in self.metrics().items() if n == name and set(labels.items()) <= set(ls))

    def terminate(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self.channel.close()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def serving(repo: Path | tuple[str, ...], log: Path, *args: str, **options):
    """A ServerProcess that is SERVING inside the block and stopped after it."""
    process = ServerProcess(repo, log, *args, **options)
    try:
        process.wait_for("SERVING")
        yield process
    finally:
        process.terminate()
