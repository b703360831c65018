"""Native API vs KServe v2 on one server, same model, same images, closed loop at
one concurrency, alternating rounds so that both see the same machine:

    python benchmarks/native_vs_kserve.py [--source demo] [--concurrency 32] [--rounds 3] [--seconds 8]

Also writes the full loadtest report (JSON, CSV, PNG plot) of a native sweep to
results/loadtest_<source>.*, the picture benchmarks/README.md shows.
"""

import argparse
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

from camserve.client.loadtest import kserve_sender, native_sender, run_levels
from camserve.client.report import plot, write_csv, write_json
from camserve.server.ops.process import ServerProcess

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks' shared workload
from workload import exported, random_images  # noqa: E402

HERE = Path(__file__).parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="demo")
    parser.add_argument("--weights", default="none")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    results = HERE / "results"
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        images = random_images(exported(args.source, repo, args.source, args.weights), 16)
        server = ServerProcess(repo, Path(tmp) / "server.log")
        try:
            server.wait_for("SERVING", timeout=600)
            apis = {
                "native": functools.partial(native_sender, server.target, model=args.source),
                "kserve": functools.partial(kserve_sender, server.target, args.source),
            }
            best = dict.fromkeys(apis, 0.0)
            rows = []
            for round_ in range(args.rounds):
                for api, sender in apis.items():
                    (report,) = run_levels(sender, images, closed=[args.concurrency], duration=args.seconds, warmup=1.0, stream=None)
                    best[api] = max(best[api], report.throughput)
                    rows.append({"round": round_, "api": api, **report.summary()})
                    print(f"  round {round_} {api}: {report.throughput:.1f} req/s, p50 {report.latency_ms['p50']:.1f} ms", file=sys.stderr)
            sweep = run_levels(apis["native"], images, closed=[1, 8, 32, 64], rates=[], duration=args.seconds, warmup=1.0)
            open_loop = run_levels(apis["native"], images, rates=[0.5 * best["native"], 0.9 * best["native"]], duration=args.seconds, warmup=1.0)
        finally:
            server.terminate()
    reports = sweep + open_loop
    stem = results / f"loadtest_{args.source}"
    context = {"command": "python " + " ".join(sys.argv), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    write_json(stem.with_suffix(".json"), reports, context)
    write_csv(stem.with_suffix(".csv"), reports)
    plot(stem.with_suffix(".png"), reports, f"camserve native API, {args.source} model (closed and open loop)")
    summary = {
        **context,
        "source": args.source,
        "concurrency": args.concurrency,
        "best_req_per_s": {k: round(v, 1) for k, v in best.items()},
        "kserve / native": round(best["kserve"] / best["native"], 3),
        "rounds": rows,
    }
    (results / f"native_vs_kserve_{args.source}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}, indent=2))


if __name__ == "__main__":
    main()
