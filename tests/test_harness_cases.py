"""Tests that end their own process, run only by tests/test_harness.py (which sets
CAMSERVE_HARNESS_CASES) to show that the suite survives them."""

import os
import signal
import time
from pathlib import Path

import pytest

CASES = os.environ.get("CAMSERVE_HARNESS_CASES", "")
pytestmark = pytest.mark.skipif(not CASES, reason="run by tests/test_harness.py")


@pytest.mark.parametrize("name", ["SIGSEGV", "SIGABRT", "SIGKILL"])
def test_a_process_killed_by(name):
    """A segmentation fault, an abort, an OOM kill."""
    if CASES == "crash":
        os.kill(os.getpid(), signal.Signals[name])


@pytest.fixture(autouse=True)
def which_process_ran_it():
    if CASES == "retire":
        with open(os.environ["CAMSERVE_HARNESS_PIDS"], "a") as pids:
            pids.write(f"{os.getpid()}\n")


@pytest.mark.parametrize("neighbour", range(3))
def test_a_neighbour(neighbour):
    pass


def test_a_server_left_running():
    """Starts a real server, says so, and waits to be killed with its pytest."""
    if CASES != "orphan":
        return
    from camserve.server.ops.process import serving

    pids = Path(os.environ["CAMSERVE_HARNESS_PIDS"])
    with serving(Path(os.environ["CAMSERVE_HARNESS_REPO"]), pids.with_suffix(".log"), "--max-batch-size", "1") as server:
        pids.write_text(f"{os.getpid()} {server.process.pid}")
        time.sleep(600)  # killed long before: the test that runs this SIGKILLs its pytest
