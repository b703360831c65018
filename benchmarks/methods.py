"""What each CAM method costs: the exported SavedModel's `explain` with every
image of the batch asking for one method, against its `predict`, in-process.
A batch computes only the methods its images ask for, so any one-pass method
should cost about what Grad-CAM costs, however many methods are exported; the
`mixed` row has every method in one batch (what every batch cost when all maps
were computed). `vit` is a ViT-Tiny-sized keras-hub classifier (random weights),
the only one of the three with the attention methods. Prints a table and writes
results/methods.json.

    python benchmarks/methods.py [--models demo resnet50 vit] [--batches 1 8 32]
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

from camserve.export.repository import read_metadata  # noqa: E402

# ViT-Tiny's width and heads at half its depth: 224x224, 196 patches of 16x16, a class token.
VIT = {"patch_size": 16, "num_layers": 6, "num_heads": 3, "hidden_dim": 192, "mlp_dim": 768}


def small_vit(folder: Path) -> str:
    """A keras-hub ViT classifier with random weights (none can be fetched here) and a
    preprocessor scaling to [-1, 1], saved as a .keras file; returns its path."""
    import keras_hub

    backbone = keras_hub.models.ViTBackbone(image_shape=(224, 224, 3), **VIT)
    converter = keras_hub.layers.ImageConverter(image_size=(224, 224), scale=1 / 127.5, offset=-1.0)
    preprocessor = keras_hub.models.ImageClassifierPreprocessor(image_converter=converter)
    classifier = keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=1000, preprocessor=preprocessor)
    path = folder / "vit.keras"
    classifier.save(path)
    return str(path)


MODELS = {**SOURCES, "vit": (small_vit, "none", None)}


def bench_model(name: str, batches, rounds: int, min_seconds: float) -> list[dict]:
    source, weights, size = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        source = source(Path(tmp)) if callable(source) else source
        version = exported(source, Path(tmp) / "repo", name, weights, size)
        methods = read_metadata(version)["methods"]
        saved = tf.saved_model.load(str(version))
        explain, predict = saved.signatures["explain"], saved.signatures["predict"]
        rows = []
        for batch in batches:
            images = tf.constant(np.stack(random_images(version, batch)))
            top1 = tf.fill([batch], -1)
            configs = {"predict": lambda: predict(images=images)["logits"].numpy()}
            for code, method in enumerate(methods):
                codes = tf.fill([batch], code)
                configs[method] = lambda codes=codes: explain(images=images, class_index=top1, method=codes)["heatmap"].numpy()
            if batch >= len(methods):
                mixed = tf.constant(np.arange(batch) % len(methods), tf.int32)
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
    run_in_process_benchmark(__doc__, bench_model, table, "methods.json", rounds=2, seconds=1.5, sources=MODELS)
