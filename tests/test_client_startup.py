"""The thin client starts like one: TensorFlow (and the other heavy libraries
only the export, server or reports need) never loads on its path, nor any package
but the few it needs."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from camserve.server.ops.process import free_port

HEAVY = ("tensorflow", "keras", "matplotlib", "h5py")
# What the thin client's path may load beside the standard library: "google" is protobuf's;
# "cython_runtime" is a module compiled extensions make. A package added here is a choice.
THIN = {"camserve", "numpy", "cv2", "google", "grpc", "grpc_health", "grpc_reflection", "grpc_tools", "typing_extensions", "cython_runtime"}

# Runs in a child process: an import, or a `camserve` command; then says what loaded: the
# heavy libraries, and every package (top-level name) it loaded that the interpreter had
# not loaded at start (site's .pth hooks) and that is not the standard library's.
PROBE = """
import json, sys
at_start = set(sys.modules)
code = 0
if sys.argv[1] == "import":
    import camserve.client
else:
    from camserve.cli import main
    try:
        code = main(sys.argv[1:])
    except SystemExit as exit:
        code = exit.code
packages = {m.split(".")[0] for m in set(sys.modules) - at_start} - set(sys.stdlib_module_names)
print(json.dumps({
    "code": code,
    "loaded": [m for m in %r if m in sys.modules],
    "packages": sorted(p for p in packages if not p.startswith("_")),
}))
""" % (HEAVY,)


def probe(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.splitlines()[-1])
    assert set(outcome["packages"]) <= THIN, f"{' '.join(args)} loads {sorted(set(outcome['packages']) - THIN)} too"
    return outcome


@pytest.mark.parametrize(
    "args",
    [("import",), ("explain", "--help"), ("loadtest", "--help"), ("evaluate", "--help"), ("serve", "--help"), ("export", "--help")],
)
def test_client_import_and_command_help_load_no_heavy_library(args):
    """No heavy library, nor any package beyond THIN (where a bound of 3 s on the time it took
    was: TensorFlow alone takes about 4 here, and a slow machine takes longer for anything)."""
    outcome = probe(*args)
    assert outcome["loaded"] == [] and outcome["code"] == 0


def test_evaluate_run_loads_no_heavy_library(tmp_path):
    """A run as far as the server lets it, here against a port nobody listens on."""
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    outcome = probe("evaluate", str(image), "--target", f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "out"), "--timeout", "2")
    assert outcome["loaded"] == [] and outcome["code"] == 1


def test_explain_run_loads_no_heavy_library(tmp_path):
    """A whole `camserve explain` run, here against a port nobody listens on."""
    image = tmp_path / "image.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    outcome = probe("explain", str(image), "--target", f"127.0.0.1:{free_port()}", "--out", str(tmp_path / "out"))
    assert outcome["loaded"] == [] and outcome["code"] == 1
