"""Explain images with an exported SavedModel in this process, using only
TensorFlow to run it: prints top-3 per image and writes overlay PNGs."""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from camserve import geometry, images  # noqa: E402
from camserve.overlay import blend  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", help="a version folder of a model repository")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    meta = json.loads((Path(args.model_dir) / "assets.extra" / "camserve.json").read_text())
    explain = tf.saved_model.load(args.model_dir).signatures["serving_default"]
    height, width = meta["input_size"]
    originals = [images.read_rgb(path) for path in args.images]  # as the server reads them: upright, alpha on white
    batch = np.stack([cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA) for img in originals])
    n = len(batch)
    result = explain(images=batch, class_index=np.full(n, -1, np.int32), method=np.zeros(n, np.int32))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    classes = meta["classes"] or [str(i) for i in range(meta["num_classes"])]
    for path, image, probs, heatmap in zip(args.images, originals, result["probabilities"].numpy(), result["heatmap"].numpy()):
        top = np.argsort(probs)[::-1][:3]
        print(Path(path).name + ": " + ", ".join(f"{classes[i]} {probs[i]:.3f}" for i in top))
        target = out / (Path(path).stem + "_gradcam.png")
        full = geometry.Region(0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
        heatmap = geometry.heatmap_to_image(heatmap, full, image.shape[1], image.shape[0])
        cv2.imwrite(str(target), cv2.cvtColor(blend(image, heatmap), cv2.COLOR_RGB2BGR))
    print(f"overlays written to {out}")


if __name__ == "__main__":
    main()
