"""What each CAM method costs: the exported SavedModel's `explain` with every
image of the batch asking for one method, against its `predict`, in-process.
A batch computes only the methods its images ask for, so any one-pass method
should cost about what Grad-CAM costs, however many methods are exported; the
`mixed` row has every method in one batch (what every batch cost when all maps
were computed). Prints a table and writes results/methods.json.

    python benchmarks/methods.py [--models demo resnet50] [--batches 1 8 32]
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from timing import SOURCES, rows_against_predict, run_in_process_benchmark  # noqa: E402
from workload import exported, random_images  # noqa: E402

from camserve.export.methods import NAMES  # noqa: E402



def bench_model(name: str, batches, rounds: int, min_seconds: float) -> list[dict]:
    source, weights, size = SOURCES[name]
    with tempfile.TemporaryDirectory() as tmp:
        version = exported(source, Path(tmp) / "repo", name, weights, size)
        saved = tf.saved_model.load(str(version))
        explain, predict = saved.signatures["explain"], saved.signatures["predict"]
        rows = []
        for batch in batches:
            images = tf.constant(np.stack(random_images(version, batch)))
            top1 = tf.fill([batch], -1)
            configs = {"predict": lambda: predict(images=images)["logits"].numpy()}
            for code, method in enumerate(NAMES):
                codes = tf.fill([batch], code)
                configs[method] = lambda codes=codes: explain(images=images, class_index=top1, method=codes)["heatmap"].numpy()
            if batch >= len(NAMES):
                mixed = tf.constant(np.arange(batch) % len(NAMES), tf.int32)
                configs["mixed"] = lambda: explain(images=images, class_index=top1, method=mixed)["heatmap"].numpy()
            rows += rows_against_predict(name, batch, configs, rounds, min_seconds)
        return rows


def table(rows) -> str:
    """One line per model and function, explain/predict per batch size."""
    batches = sorted({r["batch"] for r in rows})
    lines = ["| model | function | " + " | ".join(f"batch {b}: images/s (x predict)" for b in batches) + " |"]
    lines.append("|" + "---|" * (2 + len(batches)))
    keys = dict.fromkeys((r["model"], r["function"]) for r in rows)
    cells = {(r["model"], r["function"], r["batch"]): r for r in rows}
    for model, function in keys:
        values = [cells.get((model, function, b)) for b in batches]
        text = [f"{v['images_per_s']} ({v['vs_predict']})" if v else "" for v in values]
        lines.append(f"| {model} | {function} | " + " | ".join(text) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    run_in_process_benchmark(__doc__, bench_model, table, "methods.json", rounds=2, seconds=1.5)
