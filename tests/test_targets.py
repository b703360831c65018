"""The default target lies on the main path: the last layer on every
input-to-output path (through nested models) whose map is larger than 1x1,
never a branch of a block whose output is 1x1."""

import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from camserve.cli import main
from camserve.export import graph
from camserve.export.exporter import ExportOptions, export
from camserve.export.repository import read_metadata
from camserve.progress import Steps
from tests import reference


def conv(filters, name, kernel=3, padding="same"):
    return layers.Conv2D(filters, kernel, padding=padding, activation="relu", name=name)


def classifier(x):
    return layers.Dense(3, activation="softmax", name="dense")(layers.Flatten(name="flatten")(x))


def on_path(model):
    return {c.path: c.main for c in graph.candidates(model)}


def residual():
    inputs = keras.Input((8, 8, 3))
    x = conv(4, "stem")(inputs)
    added = layers.Add(name="add")([x, conv(4, "branch_b")(conv(4, "branch_a")(x))])
    outputs = layers.Dense(3, name="dense")(layers.GlobalAveragePooling2D(name="gap")(added))
    return keras.Model(inputs, outputs, name="residual")


def inception():
    """An Inception block (8x8), then a reduction block to 1x1 whose branches are
    the last layers with a larger map: the InceptionV3-at-75x75 shape in small."""
    inputs = keras.Input((8, 8, 3))
    x = conv(4, "stem")(inputs)
    pool = layers.MaxPooling2D(3, 1, padding="same", name="pool")(x)
    x = layers.Concatenate(name="mixed")([conv(4, "b1x1")(x), conv(4, "b3x3")(conv(4, "b3x3_reduce", 1)(x)), pool])
    reduced = [conv(4, "r_direct", 8, "valid")(x), conv(4, "r_deep", 8, "valid")(conv(4, "r_reduce", 1)(x))]
    return keras.Model(inputs, classifier(layers.Concatenate(name="mixed_last")(reduced)), name="inception")


def test_residual_block_the_add_is_on_the_main_path():
    model = residual()
    assert on_path(model) == {"stem": True, "branch_a": False, "branch_b": False, "add": True}
    assert graph.default(model) == (("add",), None)


def test_inception_block_the_concatenation_is_on_the_main_path():
    model = inception()
    main = on_path(model)
    assert [path for path, on in main.items() if on] == ["stem", "mixed", "mixed_last"]
    # Today's rule took the last larger map in layer order, a reduction branch.
    assert [c.path for c in graph.candidates(model) if graph._spatial_ok(c.shape)][-1] == "r_reduce"
    assert graph.default_target(model) == ("mixed",)
    note = graph.default(model)[1]
    assert "mixed (8x8)" in note and "1x1 from mixed_last on" in note and "r_reduce lie on branches" in note


def test_nested_backbone_under_a_sequential_head():
    """Dominance holds through nesting: inside a backbone on the main path, its own
    main path; inside a nested model on a branch, nothing."""
    backbone = residual()
    features = keras.Model(backbone.inputs, backbone.get_layer("add").output, name="backbone")
    side = keras.Sequential([keras.Input((8, 8, 4)), conv(4, "side_conv")], name="side")
    head = keras.Sequential(
        [keras.Input((8, 8, 4)), conv(4, "head_conv"), conv(4, "squeeze", 8, "valid"), layers.Flatten(), layers.Dense(3)],
        name="head",
    )
    inputs = keras.Input((8, 8, 3))
    x = features(inputs)
    model = keras.Model(inputs, head(layers.Add(name="merge")([x, side(x)])), name="outer")
    assert on_path(model) == {
        "backbone.stem": True, "backbone.branch_a": False, "backbone.branch_b": False, "backbone.add": True,
        "side.side_conv": False, "merge": True, "head.head_conv": True, "head.squeeze": True,
    }
    assert graph.default(model) == (("head", "head_conv"), None)


def test_last_conv_on_the_main_path_stays_the_default():
    inputs = keras.Input((8, 8, 3))
    x = conv(4, "conv2")(layers.MaxPooling2D(name="pool")(conv(4, "conv1")(inputs)))
    model = keras.Model(inputs, classifier(x), name="plain")
    assert all(on_path(model).values())
    assert graph.default(model) == (("conv2",), None)


def test_no_larger_map_on_the_main_path_is_a_clear_error():
    """Two towers meeting only after pooling: every larger map is a branch."""
    inputs = keras.Input((8, 8, 3))
    towers = [layers.GlobalAveragePooling2D()(conv(4, name)(inputs)) for name in ("left", "right")]
    model = keras.Model(inputs, layers.Dense(3)(layers.Concatenate()(towers)), name="towers")
    with pytest.raises(graph.TargetLayerError, match="on every input-to-output path .* lie on branches"):
        graph.default_target(model)
    assert graph.resolve_target(model, "right") == ("right",)  # --layer still takes any layer


def test_list_layers_marks_branches_and_says_why(capsys, tmp_path):
    source = tmp_path / "inception.keras"
    inception().save(source)
    assert main(["export", str(source), "--list-layers"]) == 0
    captured = capsys.readouterr()
    rows = {line.split()[0]: line for line in captured.out.splitlines()}
    assert rows["mixed"].endswith("<- default") and rows["stem"].endswith("x 4")
    assert rows["r_reduce"].endswith("(branch)") and rows["r_deep"].endswith("(branch, 1x1: no map)")
    assert rows["mixed_last"].endswith("(1x1: no map)")
    assert "default target mixed (8x8)" in captured.err


def test_inception_v3_at_its_smallest_size_explains_the_main_path(tmp_path):
    """At 75x75 InceptionV3's last blocks (mixed8-10) are 1x1; the default moves to
    mixed7 (3x3), not to a branch of mixed8 as the last larger map in layer order.
    Plain graph mode and no float64 check: this is about the target, not XLA."""
    keras.utils.set_random_seed(0)
    log = io.StringIO()
    options = ExportOptions(
        "inception_v3", str(tmp_path), "v3", weights="none", input_size=(75, 75), xla=False, verify=False
    )
    path = export(options, Steps(6, log))
    assert read_metadata(path)["target_layer"] == "mixed7"
    assert "the main path is 1x1 from mixed8 on" in log.getvalue() and "default target mixed7 (3x3)" in log.getvalue()

    noise = np.random.default_rng(2).integers(0, 256, (4, 75, 75, 3), np.uint8)
    images = np.concatenate([reference.smooth_images(4, (75, 75), seed=1), noise])
    out = tf.saved_model.load(str(path)).signatures["explain"](
        images=tf.constant(images), class_index=tf.fill([8], -1), method=tf.zeros(8, tf.int32)
    )
    assert (out["heatmap_scale"].numpy() > 0).all()  # the top-1 class of every image
