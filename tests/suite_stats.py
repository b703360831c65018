"""What each test file costs, for the suite's budget (tests/README.md): wall and CPU
seconds (this process and the children it waited for: servers, exports in
subprocesses), servers started, and this process's memory mappings, the resource
whose exhaustion (`vm.max_map_count`) crashed the suite: every XLA program a process
compiles stays mapped until it exits (about 175 mappings a program for the demo model).

`pytest --suite-stats FILE` writes {file: figures} as JSON, and prints the table;
under xdist each worker writes FILE.<worker> and the controller merges them."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pytest

_SERVERS = [0]
_popen_init = subprocess.Popen.__init__


def _counting_init(self, args, *rest, **options):
    # A `camserve serve` (or its --workers supervisor) started by a test or a fixture.
    words = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
    if "serve" in words and any("camserve" in w for w in words):
        _SERVERS[0] += 1
    _popen_init(self, args, *rest, **options)


def mappings() -> int:
    with open("/proc/self/maps", "rb") as maps:
        return sum(1 for _ in maps)


def _snapshot():
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": time.monotonic(),
        "cpu_s": own.ru_utime + own.ru_stime,
        "children_cpu_s": children.ru_utime + children.ru_stime,
        "servers": _SERVERS[0],
        "mappings": mappings(),
    }


def pytest_addoption(parser):
    parser.addoption("--suite-stats", metavar="FILE", help="write each test file's cost (tests/suite_stats.py) to FILE")


def pytest_configure(config):
    if config.getoption("--suite-stats"):
        subprocess.Popen.__init__ = _counting_init
        config.pluginmanager.register(_Recorder(config), "camserve_suite_stats")


class _Recorder:
    def __init__(self, config):
        self.path = Path(config.getoption("--suite-stats"))
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        self.out = self.path.with_name(f"{self.path.name}.{worker}") if worker else self.path
        self.controller = worker is None
        self.files = defaultdict(lambda: defaultdict(float))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        before = _snapshot()
        yield
        after = _snapshot()
        figures = self.files[item.location[0]]
        for key in before:
            figures[key] += after[key] - before[key]
        figures["tests"] += 1
        figures["mappings_at_end"] = after["mappings"]
        figures["pid"] = os.getpid()

    def pytest_sessionfinish(self, session):
        if self.files:
            self.out.write_text(json.dumps(self.files, indent=1, sort_keys=True))
        if self.controller:
            merged = dict(self.files)
            for part in self.path.parent.glob(f"{self.path.name}.*"):
                merged.update(json.loads(part.read_text()))
                part.unlink()
            self.path.write_text(json.dumps(merged, indent=1, sort_keys=True))
            self.merged = merged

    def pytest_terminal_summary(self, terminalreporter):
        merged = getattr(self, "merged", None)
        if not merged:
            return
        write = terminalreporter.write_line
        write(f"{'file':40} {'tests':>5} {'wall s':>7} {'cpu s':>7} {'child s':>7} {'servers':>7} {'+maps':>6} {'maps':>6}")
        for name, f in sorted(merged.items(), key=lambda kv: -kv[1]["wall_s"]):
            write(
                f"{name[6:]:40} {f['tests']:5.0f} {f['wall_s']:7.1f} {f['cpu_s']:7.1f} {f['children_cpu_s']:7.1f}"
                f" {f['servers']:7.0f} {f['mappings']:6.0f} {f['mappings_at_end']:6.0f}"
            )
        write(f"{'total':40} {sum(f['tests'] for f in merged.values()):5.0f} {sum(f['wall_s'] for f in merged.values()):7.1f}")
