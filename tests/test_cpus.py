"""Thread pools are sized from the CPUs the process may use, not the node's."""

import os
import shutil
import subprocess
import sys

import pytest

from camserve.server.ops import cpus


def test_cgroup_v2_and_v1_quotas(tmp_path):
    v2, quota, period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    v2.write_text("150000 100000\n")
    assert cpus._quota(v2, (quota, period)) == 1.5
    v2.write_text("max 100000\n")
    assert cpus._quota(v2, (quota, period)) is None
    v2.unlink()
    quota.write_text("50000\n")
    period.write_text("100000\n")
    assert cpus._quota(v2, (quota, period)) == 0.5
    quota.write_text("-1\n")
    assert cpus._quota(v2, (quota, period)) is None


def test_a_quota_caps_the_pinned_cores_and_rounds_up(tmp_path):
    v2 = tmp_path / "cpu.max"
    v2.write_text("50000 100000\n")  # half a CPU: still one thread
    assert cpus.available(v2, ()) == 1
    v2.write_text(f"{1000 * 100000} 100000\n")  # a quota above the pinned cores changes nothing
    assert cpus.available(v2, ()) == len(os.sched_getaffinity(0))


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
def test_pinning_to_one_core_gives_one():
    code = "from camserve.server.ops import cpus; print(cpus.available())"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"
