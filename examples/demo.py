"""The whole loop on the bundled demo model: start `camserve serve` on an
exported repository, wait until it reports SERVING, explain the sample images
through `camserve explain`, write overlays (with the localisation box), stop the server.

    python examples/demo.py REPO --out DIR
"""

import argparse
import subprocess
import sys
from importlib import resources
from pathlib import Path

from camserve.server.ops.process import ServerProcess


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    samples = sorted(Path(str(resources.files("camserve.demo") / "samples")).glob("*.png"))
    args.out.mkdir(parents=True, exist_ok=True)
    server = ServerProcess(args.repo, args.out / "server.log")
    print(f"starting camserve serve on {server.target} (log: {server.log}) ...", flush=True)
    try:
        server.wait_for("SERVING")
        print("SERVING; explaining the samples", flush=True)
        explain = [sys.executable, "-m", "camserve", "explain", *map(str, samples), "--target", server.target]
        return subprocess.run([*explain, "--out", str(args.out), "--box"], check=False).returncode
    finally:
        code = server.terminate()
        print(f"server stopped (exit {code}); overlays in {args.out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
