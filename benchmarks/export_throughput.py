"""In-process throughput of the exported computation: explain vs predict, XLA vs
the same function without jit_compile, and the seed-style eager Grad-CAM that
explains one image at a time. Prints a table and writes JSON.

    python benchmarks/export_throughput.py [--models demo resnet50] [--batches 1 8 32]
"""

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from seed_gradcam import seed_style_gradcam  # noqa: E402
from timing import SOURCES, best_of_rounds, run_in_process_benchmark  # noqa: E402

from camserve.export import graph, source  # noqa: E402
from camserve.export.explainer import Explainer  # noqa: E402



def bench_model(name: str, batches, rounds: int, min_seconds: float):
    src_name, weights, size = SOURCES[name]
    src = source.load(src_name, weights, size)
    height, width = src.model.inputs[0].shape[1:3]
    target = graph.default_target(src.model)
    head = graph.head(src.model)
    explainer = Explainer([graph.split(src.model, target, head)], src.preprocess, 3, head.kind)
    functions = {
        (kind, jit): tf.function(getattr(explainer, kind), jit_compile=jit)
        for kind in ("explain", "predict")
        for jit in (True, False)
    }
    eager = seed_style_gradcam(src.model, target[-1], src.preprocess)
    rows = []
    for batch in batches:
        images = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        class_index = tf.fill([batch], -1)
        method = tf.zeros([batch], tf.int32)
        configs = {
            "predict_xla": lambda: functions["predict", True](images)["logits"].numpy(),
            "explain_xla": lambda: functions["explain", True](images, class_index, method)["heatmap"].numpy(),
            "predict_graph": lambda: functions["predict", False](images)["logits"].numpy(),
            "explain_graph": lambda: functions["explain", False](images, class_index, method)["heatmap"].numpy(),
            "eager_per_image": lambda: [eager(image) for image in images],
        }
        started = time.perf_counter()
        result = best_of_rounds(configs, batch, rounds, min_seconds)
        row = {"model": name, "batch": batch, **{k: round(v, 2) for k, v in result.items()}}
        row["explain/predict (xla)"] = round(result["explain_xla"] / result["predict_xla"], 3)
        row["xla/graph (explain)"] = round(result["explain_xla"] / result["explain_graph"], 3)
        row["explain_xla/eager"] = round(result["explain_xla"] / result["eager_per_image"], 1)
        rows.append(row)
        print(f"  {name} batch {batch}: measured in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    return rows


def table(rows) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    run_in_process_benchmark(__doc__, bench_model, table, "export_throughput.json", rounds=3, seconds=2.0)
