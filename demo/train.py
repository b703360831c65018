"""Train the bundled demo classifier on the synthetic shapes data set.

    python -m camserve.demo.train [--out DIR] [--epochs N]

Writes ``model.keras``, ``labels.txt`` and ``samples/*.png`` to DIR (default:
this folder).  Training data and held-out data are generated afresh from fixed
seeds and all randomness is seeded with op determinism on, so a rerun on the
same machine reproduces the same weights.

The model takes float RGB in [0, 1] (pixels / 255; the exporter does that
scaling, so the model has no Rescaling layer).  It is a small CNN of
convolution/batch-norm/ReLU layers and max pooling whose last convolution,
``last_conv`` (ReLU, 16x16), feeds global average pooling and one softmax Dense:
a layout whose Grad-CAM maps localize well.
"""

import argparse
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from camserve.demo import shapes

DEMO_DIR = Path(__file__).resolve().parent
SIZE = 64
LAST_CONV = "last_conv"
TRAIN_SEED, HELDOUT_SEED = 1, 2
N_TRAIN, N_HELDOUT = 20_000, 1_000
BATCH_SIZE = 64
PEAK_LEARNING_RATE = 4e-3


def _conv_bn_relu(x, filters: int, name: str):
    """3x3 convolution, batch norm, ReLU: without batch norm this small network
    learns far too slowly for the time budget."""
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                            kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def build_model(num_classes: int = len(shapes.CLASSES)) -> keras.Model:
    """Functional CNN: 64x64x3 in [0, 1] -> class probabilities."""
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = _conv_bn_relu(inputs, 16, "block1")
    x = keras.layers.MaxPooling2D(name="block1_pool")(x)
    # Two convolutions per lower-resolution stage: the receptive field of
    # last_conv (30 px) then spans even the largest shapes.
    x = _conv_bn_relu(x, 32, "block2a")
    x = _conv_bn_relu(x, 32, "block2b")
    x = keras.layers.MaxPooling2D(name="block2_pool")(x)
    x = _conv_bn_relu(x, 64, "block3")
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu",
                            kernel_initializer="he_normal", name=LAST_CONV)(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="shapes_cnn")


def scaled(images) -> tf.Tensor:
    """uint8 pixels -> the model's float32 input in [0, 1]."""
    return tf.cast(images, tf.float32) / 255


def _batches(images: np.ndarray, labels: np.ndarray, shuffle_seed: int | None = None):
    """Batched tf.data pipeline that keeps the images uint8 until they are used."""
    data = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle_seed is not None:
        data = data.shuffle(len(labels), seed=shuffle_seed)
    return data.batch(BATCH_SIZE).map(lambda x, y: (scaled(x), y))


def train(out_dir: Path, epochs: int, seed: int = 0) -> float:
    """Train, write the artefacts to ``out_dir`` and return held-out accuracy."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    images, labels, _ = shapes.generate(N_TRAIN, TRAIN_SEED, SIZE)
    train_data = _batches(images, labels, shuffle_seed=seed)
    images, labels, _ = shapes.generate(N_HELDOUT, HELDOUT_SEED, SIZE)
    heldout_data = _batches(images, labels)

    # Starting at the peak rate leaves the loss stuck at chance for a long, seed-
    # dependent while; a one-epoch warm-up avoids that plateau.
    steps_per_epoch = len(train_data)
    learning_rate = keras.optimizers.schedules.CosineDecay(
        PEAK_LEARNING_RATE / 10, (epochs - 1) * steps_per_epoch,
        warmup_target=PEAK_LEARNING_RATE, warmup_steps=steps_per_epoch)
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    # shuffle=False: train_data reshuffles itself every epoch.
    model.fit(train_data, epochs=epochs, validation_data=heldout_data, shuffle=False, verbose=2)
    _, accuracy = model.evaluate(heldout_data, verbose=0)

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir / "model.keras")
    (out_dir / "labels.txt").write_text("".join(f"{name}\n" for name in shapes.CLASSES))
    shapes.write_samples(out_dir / "samples")
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_DIR, help="output folder")
    parser.add_argument("--epochs", type=int, default=6, help="at least 2 (one warms up)")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2")
    start = time.perf_counter()
    accuracy = train(args.out, args.epochs)
    print(f"held-out accuracy {accuracy:.4f} ({N_HELDOUT} images, seed {HELDOUT_SEED}); "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
