"""Triton's perf_analyzer, run the way SREs first run it: no input-data option, over
gRPC and over HTTP."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def perf_analyzer() -> str | None:
    return os.environ.get("CAMSERVE_PERF_ANALYZER") or shutil.which("perf_analyzer")


def environment(binary: str) -> dict:
    """perf_analyzer links libcudart (no GPU needed): use the wheel's copy beside it."""
    env = dict(os.environ)
    for lib in Path(binary).resolve().parent.parent.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"):
        env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    return env


@pytest.mark.skipif(
    perf_analyzer() is None,
    reason="perf_analyzer not found: set CAMSERVE_PERF_ANALYZER or put it on PATH (benchmarks/README.md, section 4)",
)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_default_perf_analyzer_run_measures_without_errors(server, protocol):
    binary = perf_analyzer()
    url = server.target if protocol == "grpc" else server.http.removeprefix("http://")
    command = [binary, "-m", "tiny", "-u", url, "-i", protocol, "-p", "1000", "--max-trials", "5"]
    command += ["--stability-percentage", "100"]  # a shared, noisy machine: measure, do not judge stability
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment(binary))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Throughput:" in output and "error" not in output.lower(), output[-3000:]
