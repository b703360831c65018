"""Server throughput and latency over gRPC, against the same model in-process and
against a naive per-request eager Grad-CAM server. One run, one table:

    python benchmarks/server_throughput.py [--models demo resnet50] [--levels 1 8 32 64] [--seconds 8]

Per model: in-process best throughput (explain signature, best batch size) and
batch-1 latency; then `camserve serve` with batching on (max batch 32) and off
(max batch 1), and the naive server, each driven closed-loop at every
concurrency level by camserve's load generator on the same machine.
"""

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from camserve.client.loadtest import native_sender, run_levels  # noqa: E402
from camserve.server.ops.process import ServerProcess, free_port  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks' shared workload
from workload import exported, random_images  # noqa: E402

HERE = Path(__file__).parent
MODELS = {"demo": ("demo", "imagenet", None), "resnet50": ("resnet50", "none", (224, 224))}


def say(text):
    print(text, file=sys.stderr, flush=True)


def in_process(path: Path, images: np.ndarray, batches=(1, 8, 32), seconds=3.0):
    explain = tf.saved_model.load(str(path)).signatures["serving_default"]
    best, batch1_ms = 0.0, None
    for batch in batches:
        x = tf.constant(np.resize(images, (batch, *images.shape[1:])))
        ci, m = tf.fill([batch], -1), tf.zeros([batch], tf.int32)
        explain(images=x, class_index=ci, method=m)["heatmap"].numpy()  # compile
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds:
            t = time.perf_counter()
            explain(images=x, class_index=ci, method=m)["heatmap"].numpy()
            times.append(time.perf_counter() - t)
        best = max(best, batch / np.median(times))
        if batch == 1:
            batch1_ms = float(np.median(times) * 1e3)
    return best, batch1_ms


def drive(name, process: ServerProcess, images, levels, seconds, model):
    process.wait_for("SERVING", timeout=600)
    rows = []
    try:
        sender = functools.partial(native_sender, process.target, model=model)
        for report in run_levels(sender, list(images), closed=levels, duration=seconds, warmup=1.0, stream=None):
            say(f"  {name} c={report.level}: {report.throughput:.1f}/s p50 {report.latency_ms['p50']:.1f} ms")
            rows.append({"server": name, **report.summary()})
    finally:
        process.terminate()
    return rows


def bench_model(name, levels, seconds, workdir: Path):
    src, weights, size = MODELS[name]
    say(f"{name}: export")
    path = exported(src, workdir / "repo", name, weights, size)
    images = np.stack(random_images(path, 8))
    say(f"{name}: in-process")
    best, batch1_ms = in_process(path, images)
    rows = []
    for label, max_batch in (("camserve batching", "32"), ("camserve no batching", "1")):
        say(f"{name}: {label}")
        process = ServerProcess(workdir / "repo", workdir / f"{name}-{max_batch}.log", "--model", name, "--max-batch-size", max_batch)
        rows += drive(label, process, images, levels, seconds, name)
    say(f"{name}: naive server")
    port = free_port()
    command = [sys.executable, str(HERE / "naive_server.py"), "--source", src, "--weights", weights, "--port", str(port)]
    if size:
        command += ["--input-size", *map(str, size)]
    naive = ServerProcess(None, workdir / f"{name}-naive.log", command=command, port=port)
    rows += drive("naive eager server", naive, images, levels, seconds, name)

    def peak(server):
        return max(r["throughput"] for r in rows if r["server"] == server)

    c1 = next(r for r in rows if r["server"] == "camserve batching" and r["level"] == 1)
    summary = {
        "model": name,
        "in_process_best_per_s": round(best, 2),
        "in_process_batch1_ms": round(batch1_ms, 2),
        "server_peak_per_s": round(peak("camserve batching"), 2),
        "server_peak / in-process best": round(peak("camserve batching") / best, 3),
        "server p50 c=1 / in-process batch-1": round(c1["latency_ms"]["p50"] / batch1_ms, 3),
        "batching peak / no batching peak": round(peak("camserve batching") / peak("camserve no batching"), 2),
        "server peak / naive peak": round(peak("camserve batching") / peak("naive eager server"), 1),
    }
    return rows, summary


def table(rows, columns) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--out", default=str(HERE / "results" / "server_throughput.json"))
    args = parser.parse_args()
    rows, summaries = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model_rows, summary = bench_model(name, args.levels, args.seconds, Path(tmp))
            rows += [{"model": name, **r} for r in model_rows]
            summaries.append(summary)
    flat = [
        {
            "model": r["model"],
            "server": r["server"],
            "concurrency": r["level"],
            "req/s": round(r["throughput"], 1),
            "p50 ms": round(r["latency_ms"]["p50"], 1),
            "p99 ms": round(r["latency_ms"]["p99"], 1),
            "mean batch": round(r["mean_batch_size"], 1),
            "errors": sum(r["errors"].values()),
        }
        for r in rows
    ]
    print(table(flat, list(flat[0])))
    print()
    print(table(summaries, list(summaries[0])))
    report = {
        "command": "python " + " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "note": "load generator and server share the machine's cores",
        "rows": rows,
        "summary": summaries,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
