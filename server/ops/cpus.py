"""How many CPUs this process may really use: the cores it is pinned to
(taskset, cpusets) and its cgroup's CPU quota (a container's `limits.cpu`),
not os.cpu_count(), which counts the node's cores. Thread pools are sized from
this, as the JVM and Go runtimes do; no library in our dependencies reads it."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def _quota(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> float | None:
    """CPUs granted by the cgroup quota, or None when there is none."""
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota, period = (int(p.read_text()) for p in v1)
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> int:
    """At least 1."""
    try:
        pinned = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        pinned = os.cpu_count() or 1
    quota = _quota(v2, v1)
    return max(1, min(pinned, math.ceil(quota) if quota else pinned))
