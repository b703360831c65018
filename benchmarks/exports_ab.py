"""Two or more exports of one model, timed against each other in one process:
each export's `predict` and the chosen methods at one batch size, in many short
rounds in a new random order each, and the median milliseconds a batch. Built
to compare a change to the exported computation (an A/B of two commits' exports
of the same model) on a machine too noisy for best-of-rounds at 0.05: one export
per commit, made with that commit's `camserve export`, then

    python benchmarks/exports_ab.py A=/tmp/a/demo/1 B=/tmp/b/demo/1 \\
        [--methods gradcam eigencam eigengradcam] [--batch 32] [--rounds 40] [--calls 5]

Prints a table (ms a batch, and each against the first export's predict) and
writes results/exports_ab.json. Pin it with taskset for one core's figures."""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from timing import interleaved_rounds  # noqa: E402
from workload import random_images  # noqa: E402

from camserve.export.repository import read_metadata  # noqa: E402


def configurations(label: str, version: Path, methods: list[str], batch: int) -> dict:
    saved = tf.saved_model.load(str(version))
    explain, predict = saved.signatures["explain"], saved.signatures["predict"]
    images = tf.constant(np.stack(random_images(version, batch)))
    top1, codes = tf.fill([batch], -1), read_metadata(version)["methods"]
    configs = {(label, "predict"): lambda: predict(images=images)["logits"].numpy()}
    for method in methods:
        chosen = tf.fill([batch], codes.index(method))
        configs[(label, method)] = lambda chosen=chosen: explain(images=images, class_index=top1, method=chosen)["heatmap"].numpy()
    return configs


def median_ms(configs: dict, rounds: int, calls: int) -> dict:
    def ms_a_call(fn):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls * 1e3

    return {key: statistics.median(values) for key, values in interleaved_rounds(configs, rounds, ms_a_call).items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exports", nargs="+", help="LABEL=VERSION_DIR, two or more")
    parser.add_argument("--methods", nargs="+", default=["gradcam", "eigencam", "eigengradcam"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=5, help="calls a round")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "exports_ab.json"))
    args = parser.parse_args()
    configs = {}
    for each in args.exports:
        label, _, folder = each.partition("=")
        configs |= configurations(label, Path(folder), args.methods, args.batch)
    medians = median_ms(configs, args.rounds, args.calls)
    base = medians[(args.exports[0].partition("=")[0], "predict")]
    rows = [{"export": label, "function": function, "ms_per_batch": round(ms, 2), "x_first_predict": round(base / ms, 3)}
            for (label, function), ms in medians.items()]
    print(f"| export | function | ms a batch of {args.batch} (median) | x {rows[0]['export']}'s predict |\n| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['export']} | {row['function']} | {row['ms_per_batch']} | {row['x_first_predict']} |")
    report = {"command": "python " + " ".join(sys.argv), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "tensorflow": tf.__version__, "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
