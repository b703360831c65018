"""Tiny test classifiers in the shapes users have, each with an explicit
(features, logits) chain for the independent reference: the reference calls
the layers one by one and computes the final Dense's affine part itself, never
going through camserve's graph surgery."""

from dataclasses import dataclass, field
from typing import Callable

import keras
import numpy as np
import tensorflow as tf
from keras import layers

SIZE = 32
CLASSES = 5


@dataclass
class TestModel:
    model: keras.Model
    features: Callable  # preprocessed float images -> target activations
    logits: Callable  # target activations -> the explained logits (binary: [-z, z])
    target: str  # dotted path of the target layer
    head: str = "softmax"
    size: tuple = (SIZE, SIZE)  # (H, W)
    channels: int = 3
    # Other target layers: name -> (features, logits) split there instead.
    layers: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return 2 if self.head == "binary" else CLASSES


def _affine(dense):
    return lambda h: h @ dense.kernel + dense.bias


def _chain(*fns):
    def run(x):
        for fn in fns:
            x = fn(x)
        return x

    return run


# How a head ends, as users write it: (the Dense's activation, what follows the Dense, head kind).
ENDS = {
    "logits": (None, None, "linear"),
    "dense_softmax": ("softmax", None, "softmax"),
    "softmax_layer": (None, lambda dtype: layers.Softmax(name="softmax", dtype=dtype), "softmax"),
    "tf_softmax": (tf.nn.softmax, None, "softmax"),
    "ops_softmax": (None, lambda dtype: keras.ops.softmax, "softmax"),
    # A trailing identity, as mixed-precision models end in a float32 Activation("linear").
    "softmax_cast": (None, lambda dtype: _chain(layers.Activation("softmax", dtype=dtype), layers.Activation("linear", dtype=dtype)), "softmax"),
    "sigmoid": ("sigmoid", None, "sigmoid"),
    "ops_sigmoid": (None, lambda dtype: keras.ops.sigmoid, "sigmoid"),
    "binary": (tf.math.sigmoid, None, "binary"),
    "binary_layer": (None, lambda dtype: layers.Activation("sigmoid", dtype=dtype), "binary"),
    "relu_logits": (None, lambda dtype: layers.Activation("relu", name="relu_logits", dtype=dtype), "linear"),
    # Normalising ops camserve must refuse rather than explain through.
    "hard_sigmoid": ("hard_sigmoid", None, None),
    "log_softmax": (None, lambda dtype: keras.ops.log_softmax, None),
}


def functional(dtype="float32", end="dense_softmax", size=(SIZE, SIZE), channels=3):
    """Residual CNN, target = the Activation after the Add (post-activation),
    GAP + Dense head ending as ENDS[end] says. `size` (H, W) may be non-square."""
    dense_activation, after, head = ENDS[end]
    conv1 = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1", dtype=dtype)
    pool = layers.MaxPooling2D(name="pool", dtype=dtype)
    conv2 = layers.Conv2D(8, 3, padding="same", name="conv2", dtype=dtype)
    add = layers.Add(name="add", dtype=dtype)
    relu = layers.Activation("relu", name="block_out", dtype=dtype)
    gap = layers.GlobalAveragePooling2D(name="gap", dtype=dtype)
    units = 1 if head == "binary" else CLASSES
    dense = layers.Dense(units, activation=dense_activation, name="dense", dtype=dtype)

    inputs = keras.Input((*size, channels), dtype=dtype)
    h = pool(conv1(inputs))
    a = relu(add([h, conv2(h)]))
    out = dense(gap(a))
    if after is not None:
        out = after(dtype)(out)
    model = keras.Model(inputs, out, name="functional_cnn")

    def features(x):
        h = pool(conv1(x))
        return relu(add([h, conv2(h)]))

    logits = _chain(gap, _affine(dense))
    if head == "binary":
        logits = _chain(logits, lambda z: tf.concat([-z, z], axis=-1))
    if end == "relu_logits":
        logits = _chain(logits, tf.nn.relu)

    def after_conv1(a):  # the rest of the graph from conv1's output (twice block_out's resolution)
        h = pool(a)
        return logits(relu(add([h, conv2(h)])))

    return TestModel(model, features, logits, "block_out", head or "refused", size, channels, {"conv1": (conv1, after_conv1)})


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


def nested(dtype="float32", target="head.head_conv", activation="softmax"):
    """The second seed's shape: a VGG-style conv base built as its own Model, used
    as a layer of an outer model whose Sequential head (conv, average pooling,
    Dense softmax or sigmoid) is another nested model."""
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
    dense = layers.Dense(CLASSES, activation=activation, name="dense", dtype=dtype)
    head = keras.Sequential([keras.Input((8, 8, 12), dtype=dtype), head_conv, avg, flatten, dense], name="head")

    inputs = keras.Input((SIZE, SIZE, 3), dtype=dtype)
    model = keras.Model(inputs, head(base(inputs)), name="vgg_cam")
    tail = _chain(avg, flatten, _affine(dense))
    if target == "head.head_conv":
        return TestModel(model, _chain(base, head_conv), tail, target, activation)
    # Target inside the backbone: the rest of the backbone is part of the head.
    first = _chain(convs["block1_conv1"], pools[0], convs["block2_conv1"], convs["block2_conv2"])
    return TestModel(model, first, _chain(pools[1], head_conv, tail), target, activation)


BUILDERS = {
    "functional": functional,
    "sequential": sequential,
    "nested": nested,
    "nested_backbone_target": lambda dtype="float32": nested(dtype, target="vgg.block2_conv2"),
    "nested_sigmoid": lambda dtype="float32": nested(dtype, activation="sigmoid"),
    "wide": lambda dtype="float32": functional(dtype, size=(48, 96)),
    "tall": lambda dtype="float32": functional(dtype, size=(96, 48)),
    "gray": lambda dtype="float32": functional(dtype, channels=1),
    **{end: (lambda end: lambda dtype="float32": functional(dtype, end=end))(end) for end in ENDS if end != "dense_softmax"},
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
