"""How the suite runs (tests/README.md): in pytest-xdist worker processes, whole files
to a worker, so that a crash of TensorFlow (a segmentation fault, an abort, an OOM
kill) fails the test it happened in and the run goes on; compiled XLA programs shared
between processes and runs through TensorFlow's persistent compilation cache; no
process outliving the run.

Why by hand: xdist reports a dead worker without saying how it died, gives the test it
died in to the next worker, replaces no worker that is merely full, and nothing ties a
worker's life to its controller's."""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import signal
from pathlib import Path

import pytest
from xdist.scheduler import LoadFileScheduling

from tests.suite_stats import mappings

# What each file cost in the last measured run (`make test-costs`, tests/suite_stats.py):
# the costliest files start first, so that no long file starts last and runs alone.
COSTS = Path(__file__).with_name("costs.json")
MAP_COUNT_FILE = Path("/proc/sys/vm/max_map_count")
MAX_MAP_COUNT = int(MAP_COUNT_FILE.read_text()) if MAP_COUNT_FILE.exists() else 65530
# Every XLA program a process compiles stays mapped until it exits, and a process that
# nears vm.max_map_count dies in LLVM (the suite's old crash: one process held them all).
# A worker past RETIRE_AT is replaced by a fresh one once its files are done; a test that
# takes its process past FAIL_AT fails (one file compiling that much belongs in a process
# of its own).
RETIRE_AT = int(os.environ.get("CAMSERVE_TEST_RETIRE_AT") or MAX_MAP_COUNT * 3 // 10)  # tests/test_harness.py sets it
FAIL_AT = MAX_MAP_COUNT * 6 // 10


def xla_cache_flags() -> str:
    """TF_XLA_FLAGS that share compiled XLA programs between every process of the
    suite (workers, servers, exports in subprocesses) and between runs and clones, as
    ccache does for C: a program is keyed by its HLO's fingerprint and the compile
    options, so a stale entry is never served; the folder is per TensorFlow version,
    in the user's cache folder. CAMSERVE_TEST_XLA_CACHE moves it."""
    version = importlib.metadata.version("tensorflow")
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = Path(os.environ.get("CAMSERVE_TEST_XLA_CACHE") or user_cache / "camserve-tests" / f"xla-tf{version}")
    folder.mkdir(parents=True, exist_ok=True)
    return f"--tf_xla_persistent_cache_directory={folder}"


def pytest_configure(config):
    """Before TensorFlow is imported (test modules import it), here and in every child
    this process starts."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    flags = os.environ.get("TF_XLA_FLAGS", "")
    if "tf_xla_persistent_cache_directory" not in flags:
        os.environ["TF_XLA_FLAGS"] = f"{flags} {xla_cache_flags()}".strip()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # A worker dies with its controller (a SIGKILLed pytest leaves none behind); the
        # servers it starts die with it in turn (server/ops/process.py's LIFELINE).
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def pytest_collection_modifyitems(config, items):
    """The files in descending order of their last measured cost (new files first)."""
    costs = {path: figures["wall_s"] for path, figures in json.loads(COSTS.read_text()).items()} if COSTS.exists() else {}
    order = {path: i for i, path in enumerate(dict.fromkeys(item.location[0] for item in items))}
    items.sort(key=lambda item: (-costs.get(item.location[0], float("inf")), order[item.location[0]]))


class CrashOnceScheduling(LoadFileScheduling):
    """xdist's file scheduling, except that the test a worker died in is not given to the
    next worker with the rest of its file (xdist gives it: each replacement then dies the
    same way until the restarts run out, and the file's later tests never run)."""

    def remove_node(self, node):
        workload = self.assigned_work.pop(node)
        pending = [nodeid for unit in workload.values() for nodeid, done in unit.items() if not done]
        if not pending:
            return None
        crashed = pending[0]  # a worker runs its tests in order: the first pending one was running
        for unit in workload.values():
            if crashed in unit:
                unit[crashed] = True
        self.workqueue.update((scope, unit) for scope, unit in workload.items() if not all(unit.values()))
        for other in self.assigned_work:
            self._reschedule(other)
        return crashed


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    return CrashOnceScheduling(config, log) if config.getoption("dist") == "loadfile" else None


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem, report, sched):
    """Names the signal that killed the worker in the crashed test's failure."""
    popen = getattr(getattr(getattr(report.node, "gateway", None), "_io", None), "popen", None)
    try:
        code = popen.wait(timeout=10) if popen else None
    except Exception:  # noqa: BLE001 - still running or not ours to wait for: say nothing more
        code = None
    if code is not None and code < 0:
        report.longrepr = f"{report.longrepr}: the worker was killed by {signal.Signals(-code).name}"
    elif code is not None:
        report.longrepr = f"{report.longrepr}: the worker exited with {code}"


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item):
    held = mappings()
    item.user_properties.append(("mappings", held))  # for the controller (pytest_runtest_logreport)
    if held > FAIL_AT:
        pytest.fail(
            f"this process holds {held} memory mappings, past {FAIL_AT} of vm.max_map_count's {MAX_MAP_COUNT}: "
            "every XLA program it compiled stays mapped. Compile fewer programs in-process (a server process, a "
            "shorter ladder, the plain graph where XLA is not the subject) so that no worker dies in LLVM.",
            pytrace=False,
        )


_RETIRING = set()


def pytest_runtest_logreport(report):
    """On the controller: a worker past RETIRE_AT is told to shut down after the tests it
    has been given (xdist then gives it no more), and replaced."""
    node = getattr(report, "node", None)
    held = dict(report.user_properties).get("mappings", 0) if report.when == "teardown" else 0
    if node is not None and held > RETIRE_AT and node not in _RETIRING:
        _RETIRING.add(node)
        node.shutdown()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    dsession = node.config.pluginmanager.getplugin("dsession")
    if node in _RETIRING and error is None and not dsession.shuttingdown:
        dsession._clone_node(node)  # as xdist replaces a crashed worker
