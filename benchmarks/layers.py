"""What maps at several layers cost: the model exported with one target layer and
with two (its default and an earlier, finer one), in-process, every image of a
batch asking for Grad-CAM at one layer or a fusion, against `predict`. Prints a
table and writes results/layers.json.

    python benchmarks/layers.py [--models demo resnet50] [--batches 1 8 32]
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from methods import table  # noqa: E402
from timing import SOURCES, rows_against_predict, run_in_process_benchmark  # noqa: E402
from workload import exported, random_images  # noqa: E402

LAYERS = {"demo": ["last_conv", "block2b_relu"], "resnet50": ["conv5_block3_out", "conv4_block6_out"]}
LAYER_CODE = 512  # camserve.json's layer_code


def bench_model(name: str, batches, rounds: int, min_seconds: float) -> list[dict]:
    source, weights, size = SOURCES[name]
    default, finer = LAYERS[name]
    with tempfile.TemporaryDirectory() as tmp:
        one = exported(source, Path(tmp) / "repo", "one", weights, size, [default])
        two = exported(source, Path(tmp) / "repo", "two", weights, size, [default, finer])
        predict = tf.saved_model.load(str(one)).signatures["predict"]
        single = tf.saved_model.load(str(one)).signatures["explain"]
        layered = tf.saved_model.load(str(two)).signatures["explain"]
        rows = []
        for batch in batches:
            images = tf.constant(np.stack(random_images(one, batch)))
            top1 = tf.fill([batch], -1)

            def run(signature, code):
                codes = tf.fill([batch], code)
                return lambda: signature(images=images, class_index=top1, method=codes)["heatmap"].numpy()

            configs = {
                "predict": lambda: predict(images=images)["logits"].numpy(),
                f"one layer: {default}": run(single, 0),
                f"two layers: {default} (default)": run(layered, 0),
                f"two layers: {finer}": run(layered, LAYER_CODE),
                "two layers: mean fusion": run(layered, 2 * LAYER_CODE),
            }
            rows += rows_against_predict(name, batch, configs, rounds, min_seconds)
        return rows


if __name__ == "__main__":
    run_in_process_benchmark(__doc__, bench_model, table, "layers.json", rounds=2, seconds=1.5)
