"""The committed gRPC stubs are exactly what proto/generate.py makes of proto/."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_fresh(tmp_path):
    # A child process: protoc and TensorFlow's protobuf do not share one process safely.
    done = subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    fresh = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "no stubs generated"
    for path in fresh:
        committed = REPO / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make proto`"
        assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale: run `make proto`"
