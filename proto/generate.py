"""Generates the Python gRPC stubs from proto/ (the one command: `make proto`).
The stubs are committed and never edited by hand; a test checks they are fresh."""

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO = PROTO_ROOT.parent


def sources() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path = REPO) -> list[Path]:
    """Writes camserve/<package>/*_pb2*.py(i) under out_dir; returns the files."""
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf well-known types
    for source in sources():
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(source),
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {source}")
    return sorted((Path(out_dir) / "camserve").rglob("*_pb2*.py*"))


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO
    for path in generate(out):
        print(path.relative_to(out), file=sys.stderr)
