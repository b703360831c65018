"""Tiny test classifiers in the shapes users have, each with an explicit
(features, logits) chain for the independent reference: the reference calls
the layers one by one and computes the final Dense's affine part itself, never
going through camserve's graph surgery."""

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
from keras import layers

SIZE = 32
CLASSES = 5


@dataclass
class TestModel:
    model: keras.Model
    features: Callable  # preprocessed float images -> target activations
    logits: Callable  # target activations -> pre-softmax logits
    target: str  # dotted path of the target layer


def _affine(dense):
    return lambda h: h @ dense.kernel + dense.bias


def _chain(*fns):
    def run(x):
        for fn in fns:
            x = fn(x)
        return x

    return run


def functional(dtype="float32", end="dense_softmax", size=(SIZE, SIZE)):
    """Residual CNN, target = the Activation after the Add (post-activation),
    GAP + Dense head; ends in Dense(softmax) or Dense + a separate Softmax layer.
    `size` (H, W) may be non-square."""
    conv1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1", dtype=dtype)
    pool = layers.MaxPooling2D(name="pool", dtype=dtype)
    conv2 = layers.Conv2D(8, 3, padding="same", name="conv2", dtype=dtype)
    add = layers.Add(name="add", dtype=dtype)
    relu = layers.Activation("relu", name="block_out", dtype=dtype)
    gap = layers.GlobalAveragePooling2D(name="gap", dtype=dtype)
    activation = "softmax" if end == "dense_softmax" else None
    dense = layers.Dense(CLASSES, activation=activation, name="dense", dtype=dtype)

    inputs = keras.Input((*size, 3), dtype=dtype)
    h = pool(conv1(inputs))
    a = relu(add([h, conv2(h)]))
    out = dense(gap(a))
    if end == "softmax_layer":
        out = layers.Softmax(name="softmax", dtype=dtype)(out)
    model = keras.Model(inputs, out, name="functional_cnn")

    def features(x):
        h = pool(conv1(x))
        return relu(add([h, conv2(h)]))

    return TestModel(model, features, _chain(gap, _affine(dense)), "block_out")


def sequential(dtype="float32"):
    """Sequential CNN with a Flatten + Dense(softmax) head."""
    trunk = [
        layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1", dtype=dtype),
        layers.MaxPooling2D(name="pool", dtype=dtype),
        layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2", dtype=dtype),
    ]
    flatten = layers.Flatten(name="flatten", dtype=dtype)
    dense = layers.Dense(CLASSES, activation="softmax", name="dense", dtype=dtype)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3), dtype=dtype), *trunk, flatten, dense], name="sequential_cnn")
    return TestModel(model, _chain(*trunk), _chain(flatten, _affine(dense)), "conv2")


def nested(dtype="float32", target="head.head_conv"):
    """The second seed's shape: a VGG-style conv base built as its own Model, used
    as a layer of an outer model whose Sequential head (conv, average pooling,
    Dense softmax) is another nested model."""
    base_in = keras.Input((SIZE, SIZE, 3), dtype=dtype)
    convs = {
        name: layers.Conv2D(filters, 3, padding="same", activation="relu", name=name, dtype=dtype)
        for name, filters in (("block1_conv1", 8), ("block2_conv1", 12), ("block2_conv2", 12))
    }
    pools = [layers.MaxPooling2D(name=f"block{i}_pool", dtype=dtype) for i in (1, 2)]
    x = pools[0](convs["block1_conv1"](base_in))
    x = pools[1](convs["block2_conv2"](convs["block2_conv1"](x)))
    base = keras.Model(base_in, x, name="vgg")

    head_conv = layers.Conv2D(10, 3, padding="same", activation="relu", name="head_conv", dtype=dtype)
    avg = layers.AveragePooling2D(8, name="avg", dtype=dtype)  # to 1x1, as in the seed
    flatten = layers.Flatten(name="flatten", dtype=dtype)
    dense = layers.Dense(CLASSES, activation="softmax", name="dense", dtype=dtype)
    head = keras.Sequential([keras.Input((8, 8, 12), dtype=dtype), head_conv, avg, flatten, dense], name="head")

    inputs = keras.Input((SIZE, SIZE, 3), dtype=dtype)
    model = keras.Model(inputs, head(base(inputs)), name="vgg_cam")
    tail = _chain(avg, flatten, _affine(dense))
    if target == "head.head_conv":
        return TestModel(model, _chain(base, head_conv), tail, target)
    # Target inside the backbone: the rest of the backbone is part of the head.
    first = _chain(convs["block1_conv1"], pools[0], convs["block2_conv1"], convs["block2_conv2"])
    return TestModel(model, first, _chain(pools[1], head_conv, tail), target)


BUILDERS = {
    "functional": functional,
    "sequential": sequential,
    "nested": nested,
    "softmax_layer": lambda dtype="float32": functional(dtype, end="softmax_layer"),
    "nested_backbone_target": lambda dtype="float32": nested(dtype, target="vgg.block2_conv2"),
    "wide": lambda dtype="float32": functional(dtype, size=(48, 96)),
    "tall": lambda dtype="float32": functional(dtype, size=(96, 48)),
}


def build(kind: str, seed: int = 0, transform=None) -> tuple[TestModel, TestModel]:
    """The float32 model and its float64 twin with the same weights;
    `transform(weights)` may change the weights first."""
    keras.utils.set_random_seed(seed)
    model32 = BUILDERS[kind]()
    weights = model32.model.get_weights()
    if transform is not None:
        weights = transform(weights)
        model32.model.set_weights(weights)
    model64 = BUILDERS[kind](dtype="float64")
    model64.model.set_weights([np.asarray(w, np.float64) for w in weights])
    return model32, model64
