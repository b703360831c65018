"""The thin client starts like one: TensorFlow (and the other heavy libraries
only the export, server or reports need) never loads on its path."""

import json
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from camserve.server.ops.process import free_port

HEAVY = ("tensorflow", "keras", "matplotlib", "h5py")

# Runs in a child process: an import, or a `camserve` command; then says what loaded.
PROBE = """
import json, sys
code = 0
if sys.argv[1] == "import":
    import camserve.client
else:
    from camserve.cli import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def probe(*args: str) -> tuple[dict, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1]), elapsed


@pytest.mark.parametrize(
    "args",
    [("import",), ("explain", "--help"), ("loadtest", "--help"), ("evaluate", "--help"), ("serve", "--help"), ("export", "--help")],
)
def test_client_import_and_command_help_load_no_heavy_library(args):
    outcome, elapsed = probe(*args)
    assert outcome["loaded"] == [] and outcome["code"] == 0
    assert elapsed < 3.0, f"{' '.join(args)} took {elapsed:.1f}s (TensorFlow alone takes about 4)"


def test_evaluate_run_loads_no_heavy_library(tmp_path):
    """A run as far as the server lets it, here against a port nobody listens on."""
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    outcome, _ = probe("evaluate", str(image), "--target", f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "out"), "--timeout", "2")
    assert outcome["loaded"] == [] and outcome["code"] == 1


def test_explain_run_loads_no_heavy_library(tmp_path):
    """A whole `camserve explain` run, here against a port nobody listens on."""
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    outcome, _ = probe("explain", str(image), "--target", f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "out"))
    assert outcome["loaded"] == [] and outcome["code"] == 1
