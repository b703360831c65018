"""The suite's harness (tests/harness.py), run as `make test` runs it, on cases that end
their own process (tests/test_harness_cases.py): a crash fails its test alone, and a
killed pytest leaves no server behind."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.waiting import eventually

CASES = "tests/test_harness_cases.py"


def inner_pytest(tmp_path, cases: str, *args, **env):
    """pytest with the project's own options (pyproject.toml: two workers, whole files)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "basetemp"), *args]
    return subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "CAMSERVE_HARNESS_CASES": cases, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_crashing_test_fails_alone_and_the_run_goes_on(tmp_path):
    """Three tests that die by SIGSEGV, SIGABRT and SIGKILL, between passing neighbours:
    each is reported failed with its name and signal, every other test passes."""
    run = inner_pytest(tmp_path, "crash", CASES)
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 1, output
    for name in ("SIGSEGV", "SIGABRT", "SIGKILL"):
        test = f"{CASES}::test_a_process_killed_by[{name}]"
        assert f"crashed while running '{test}': the worker was killed by {name}" in output, output
    assert "3 failed, 4 passed" in output.splitlines()[-1], output


def test_a_worker_holding_many_mappings_is_replaced(tmp_path):
    """A worker past the bound (here every worker, after its first test) finishes what it
    was given and is replaced: every test passes, on more processes than the two workers
    (one test at a time is given out, so that replacements get some)."""
    pids = tmp_path / "pids"
    run = inner_pytest(tmp_path, "retire", CASES, "--dist", "load", "--maxschedchunk", "1", CAMSERVE_TEST_RETIRE_AT="1", CAMSERVE_HARNESS_PIDS=str(pids))
    output, _ = run.communicate(timeout=300)
    assert run.returncode == 0 and "7 passed" in output.splitlines()[-1], output
    assert len(set(pids.read_text().split())) > 2, pids.read_text()


def is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # dead, its parent not yet told


def test_a_killed_pytest_leaves_no_server_running(tmp_path, server_repo):
    """pytest SIGKILLed while a test holds a real server: its worker and the server go too."""
    pids = tmp_path / "pids"
    run = inner_pytest(
        tmp_path, "orphan", f"{CASES}::test_a_server_left_running", CAMSERVE_HARNESS_PIDS=str(pids), CAMSERVE_HARNESS_REPO=str(server_repo)
    )
    try:
        assert eventually(lambda: pids.exists() and pids.read_text() or run.poll() is not None, timeout=240), "no server started"
        assert run.poll() is None, run.communicate()[0]
        worker, server = map(int, pids.read_text().split())
        run.send_signal(signal.SIGKILL)
        run.wait(10)
        assert eventually(lambda: is_gone(worker) and is_gone(server), timeout=30), "a worker or its server outlived pytest"
    finally:
        if run.poll() is None:
            run.kill()
