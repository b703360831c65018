"""Soak: the server at saturation for minutes, its memory sampled throughout.
Shows whether resident memory stays flat after warm-up (no leak per request).

    python benchmarks/soak.py [--source demo] [--minutes 5] [--concurrency 32]

Writes results/soak.json and results/soak.png (RSS and throughput over time).
"""

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from camserve.client.loadtest import closed_loop, native_sender
from camserve.server.ops.process import ServerProcess

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks' shared workload
from workload import exported, random_images  # noqa: E402

HERE = Path(__file__).parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="demo")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per measured window")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        images = random_images(exported(args.source, repo, "soak", args.weights), 16)
        server = ServerProcess(repo, Path(tmp) / "server.log")
        server.wait_for("SERVING", timeout=600)
        samples, stop = [], threading.Event()
        started = time.monotonic()

        def sample():
            while not stop.is_set():
                samples.append((time.monotonic() - started, rss_mb(server.process.pid)))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample)
        sampler.start()
        windows = []

        async def drive():
            async with native_sender(server.target, model="soak") as sender:
                while time.monotonic() - started < args.minutes * 60:
                    report = await closed_loop(sender.send, images, args.concurrency, args.window, 0.0)
                    windows.append((time.monotonic() - started, report.throughput, sum(report.errors.values())))
                    print(
                        f"  {windows[-1][0]:6.0f}s  {report.throughput:7.1f} req/s  rss {samples[-1][1]:7.1f} MB  "
                        f"errors {windows[-1][2]}",
                        file=sys.stderr,
                        flush=True,
                    )

        try:
            asyncio.run(drive())
        finally:
            stop.set()
            sampler.join()
            server.terminate()

    rss = np.array([r for _, r in samples])
    first_window = windows[0][0]
    after_warm = rss[[t >= first_window for t, _ in samples]]
    summary = {
        "command": "python " + " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "source": args.source,
        "concurrency": args.concurrency,
        "minutes": args.minutes,
        "requests": int(sum(t * args.window for _, t, _ in windows)),
        "errors": int(sum(e for *_, e in windows)),
        "mean_throughput": float(np.mean([t for _, t, _ in windows])),
        "rss_mb_after_first_window": float(after_warm[0]),
        "rss_mb_max_after_first_window": float(after_warm.max()),
        "rss_mb_end": float(rss[-1]),
        "rss_growth_mb_after_first_window": float(after_warm.max() - after_warm[0]),
        "samples": [[round(t, 1), round(r, 1)] for t, r in samples],
        "windows": [[round(t, 1), round(tp, 1), e] for t, tp, e in windows],
    }
    out = HERE / "results" / "soak.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary, HERE / "results" / "soak.png")
    print({k: v for k, v in summary.items() if k not in ("samples", "windows")})


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    t, r = zip(*summary["samples"])
    ax.plot(t, r, label="server RSS (MB)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MB)")
    ax2 = ax.twinx()
    wt, wp, _ = zip(*summary["windows"])
    ax2.plot(wt, wp, "o-", color="tab:orange", label="throughput (req/s)")
    ax2.set_ylabel("req/s")
    ax.set_title(f"soak: {summary['source']}, concurrency {summary['concurrency']}, {summary['minutes']} min")
    fig.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
