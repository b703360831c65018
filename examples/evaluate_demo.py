"""`make evaluate`: which CAM method explains the demo model best, measured.

Writes a held-out set of the demo's shapes with their boxes (a seed neither
training nor the tests use), serves the exported demo model on a free loopback
port, and runs `camserve evaluate` on it: DIR/evaluation.md (the table),
evaluation.json, curves.png (deletion/insertion) and grid.png (images x methods).

    python examples/evaluate_demo.py MODEL_REPO --out DIR [--count 200]
"""

import argparse
import sys
from pathlib import Path

from camserve.cli import main as camserve
from camserve.demo import shapes
from camserve.server.ops.process import serving

HELD_OUT_SEED = 4242


def run() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", type=Path, help="a model repository holding the exported demo model")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--images", type=Path, help="where the held-out set goes (default: beside --out; never inside it)")
    args = parser.parse_args()
    images = args.images or args.out.parent / f"{args.out.name}_images"
    boxes = shapes.write_set(images, args.count, HELD_OUT_SEED)
    print(f"wrote {args.count} held-out images and {boxes}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    with serving(args.repo, args.out / "server.log") as server:
        return camserve(["evaluate", str(images), "--target", server.target, "--boxes", str(boxes), "--out", str(args.out)])


if __name__ == "__main__":
    sys.exit(run())
