"""Development check of the demo model: held-out accuracy and Grad-CAM pointing game.

    python -m camserve.demo.evaluate [--model PATH] [--n N] [--seed S]

Written independently of the exporter as plain eager TensorFlow, one image at a
time, so it can serve as a reference.  Grad-CAM for class c at a conv layer with
activations A_k: w_k = spatial mean of d(logit_c)/dA_k, map = ReLU(sum_k w_k A_k),
where logit_c is the pre-softmax score.  The pointing game counts an image as a
hit when the argmax of the map, bilinearly upsampled to the image size, falls
inside the object's box.
"""

import argparse
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf

from camserve.demo import shapes
from camserve.demo.train import DEMO_DIR, LAST_CONV, SIZE, TRAIN_SEED, scaled

CHECK_SEED = 3  # neither the training seed nor the one train.py reports on


class GradCam:
    """Logits and Grad-CAM maps of a model whose layers after ``layer_name`` form a
    chain ending in a Dense layer (as in the demo model: pooling, then Dense)."""

    def __init__(self, model: keras.Model, layer_name: str = LAST_CONV):
        layer = model.get_layer(layer_name)
        self._features = keras.Model(model.input, layer.output)
        self._head = model.layers[model.layers.index(layer) + 1:-1]
        self._dense = model.layers[-1]

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(logits [classes], map [h, w])`` for one uint8 image, the map
        for the predicted class."""
        with tf.GradientTape() as tape:
            activations = self._features(scaled(image[None]))
            x = activations
            for layer in self._head:
                x = layer(x)
            logits = (x @ self._dense.kernel + self._dense.bias)[0]
            score = logits[int(tf.argmax(logits))]
        gradients = tape.gradient(score, activations)
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))[0]
        return logits.numpy(), cam.numpy()


def pointing_game(model: keras.Model, images: np.ndarray, labels: np.ndarray,
                  boxes: np.ndarray) -> tuple[float, float]:
    """Return ``(accuracy, pointing rate)`` over the given images; a hit is the
    argmax of the predicted class's map lying inside the box (x1, y1 exclusive)."""
    grad_cam = GradCam(model)
    correct = hits = 0
    for image, label, (x0, y0, x1, y1) in zip(images, labels, boxes):
        logits, cam = grad_cam(image)
        upsampled = cv2.resize(cam, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        y, x = np.unravel_index(upsampled.argmax(), upsampled.shape)
        correct += logits.argmax() == label
        hits += x0 <= x < x1 and y0 <= y < y1
    return correct / len(images), hits / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEMO_DIR / "model.keras")
    parser.add_argument("--n", type=int, default=1000, help="number of held-out images")
    parser.add_argument("--seed", type=int, default=CHECK_SEED)
    args = parser.parse_args()
    if args.seed == TRAIN_SEED:
        parser.error("the training seed is not held out")
    model = keras.saving.load_model(args.model)
    images, labels, boxes = shapes.generate(args.n, args.seed, SIZE)
    accuracy, pointing = pointing_game(model, images, labels, boxes)
    print(f"accuracy {accuracy:.4f}  pointing game {pointing:.4f}  "
          f"({args.n} images, seed {args.seed})")


if __name__ == "__main__":
    main()
