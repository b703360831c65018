"""Every keras.applications constructor by name, with the preprocessing keras gives it."""

import inspect
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from camserve.export import source
from camserve.export.exporter import ExportOptions, export
from camserve.export.preprocess import MODES

CONSTRUCTORS = dict(inspect.getmembers(keras.applications, inspect.isfunction))

# The snake_case names camserve took before it took every constructor (they must keep
# working), then one of each other kind.
SNAKE_CASE = {
    "vgg16": "VGG16", "vgg19": "VGG19", "resnet50": "ResNet50", "resnet101": "ResNet101", "resnet152": "ResNet152",
    "resnet50_v2": "ResNet50V2", "resnet101_v2": "ResNet101V2", "mobilenet": "MobileNet", "mobilenet_v2": "MobileNetV2",
    "mobilenet_v3_small": "MobileNetV3Small", "mobilenet_v3_large": "MobileNetV3Large", "inception_v3": "InceptionV3",
    "xception": "Xception", "densenet121": "DenseNet121", "densenet169": "DenseNet169", "efficientnet_b0": "EfficientNetB0",
    "efficientnet_v2_b0": "EfficientNetV2B0", "convnext_tiny": "ConvNeXtTiny",
    "inception_resnet_v2": "InceptionResNetV2", "nasnet_mobile": "NASNetMobile", "convnext_xlarge": "ConvNeXtXLarge",
    "efficientnet_v2_s": "EfficientNetV2S", "resnet152_v2": "ResNet152V2", "densenet201": "DenseNet201",
}


def keras_preprocess(name):
    """preprocess_input of the public keras.applications module named like the constructor's
    own (keras.applications.mobilenet_v3 for MobileNetV3Small)."""
    return getattr(keras.applications, CONSTRUCTORS[name].__module__.rpartition(".")[2]).preprocess_input


def mode_keras_applies(name) -> str:
    """The one camserve mode that computes what the family's own preprocess_input does."""
    pixels = np.random.default_rng(0).uniform(0, 255, (1, 2, 3, 3)).astype(np.float32)
    expected = np.asarray(keras_preprocess(name)(pixels.copy()))  # it may work in place
    (mode,) = [m for m, f in MODES.items() if np.allclose(f(tf.constant(pixels)).numpy(), expected, atol=1e-4)]
    return mode


def test_keras_ships_the_constructors_this_test_knows():
    assert len(CONSTRUCTORS) >= 40 and set(SNAKE_CASE.values()) <= set(CONSTRUCTORS)


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_constructor_resolves_by_both_names_with_its_preprocessing(name, monkeypatch):
    mode = mode_keras_applies(name)
    built = []
    monkeypatch.setattr(keras.applications, name, lambda **kwargs: built.append(kwargs) or name)
    snake = source.snake_case(name)
    assert re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", snake) and snake.replace("_", "") == name.lower()
    for spelling in (name, snake):
        loaded = source.load(spelling, weights="none", input_size=(40, 48))
        assert (loaded.model, loaded.preprocess) == (name, mode), spelling
    assert built == [{"weights": None, "input_shape": (40, 48, 3)}] * 2


@pytest.mark.parametrize("snake, name", sorted(SNAKE_CASE.items()))
def test_snake_case_names(snake, name):
    assert source.APPLICATIONS[snake].constructor == name


def test_unknown_name_lists_close_matches():
    with pytest.raises(source.SourceError, match=r"did you mean EfficientNetV2B0\b"):
        source.load("EfficientNetV2B00")
    with pytest.raises(source.SourceError, match=r"did you mean convnext_tiny\b"):
        source.load("convnext-tiny")


@pytest.mark.parametrize("name, size, minimum", [("MobileNetV3Small", (31, 64), "32x32"), ("inception_resnet_v2", (80, 74), "75x75")])
def test_input_size_below_the_constructors_minimum(name, size, minimum):
    with pytest.raises(source.SourceError, match=f"--input-size {size[0]}x{size[1]} is too small for .*at least {minimum}$"):
        source.load(name, weights="none", input_size=size)


# Cheap ones (seconds each, where DenseNet121 or EfficientNetV2B0 take minutes here),
# each prepared differently: inside the model, "tf" and "caffe". Plain graph mode: this
# is about preprocessing, and XLA's compile was 40 % of MobileNetV3Small's 29 s.
@pytest.mark.parametrize("name", ["MobileNetV3Small", "MobileNet", "VGG16"])
def test_export_by_name_matches_keras_with_its_own_preprocess_input(name, tmp_path):
    size = (32, 32)  # the smallest each takes
    keras.utils.set_random_seed(1)  # the same random weights in both builds
    # The same network without its softmax: random weights give near-uniform probabilities,
    # so the logits, at their own scale, are what tells one preprocessing from another.
    model = CONSTRUCTORS[name](weights=None, input_shape=(*size, 3), classifier_activation=None)
    keras.utils.set_random_seed(1)
    path = export(ExportOptions(source=name, repo=str(tmp_path), name="m", weights="none", input_size=size, verify=False, xla=False))

    images = np.random.default_rng(2).integers(0, 256, (2, *size, 3), dtype=np.uint8)
    exported = tf.saved_model.load(str(path)).signatures["predict"](images=tf.constant(images))
    logits = model(keras_preprocess(name)(images.astype(np.float32)), training=False).numpy()
    scale = np.ptp(logits)
    np.testing.assert_allclose(exported["logits"].numpy(), logits, rtol=0, atol=1e-4 * scale)
    np.testing.assert_allclose(exported["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), rtol=1e-5)
    wrong = model(images / 255.0, training=False).numpy()  # "scale", which no family uses
    assert np.abs(wrong - logits).max() > 1e-2 * scale
