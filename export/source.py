"""Where a model comes from: a .keras/.h5 file, a keras.applications name, or
`demo`, the bundled shapes classifier."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import keras

# keras.applications name -> (constructor, the preprocessing its weights expect).
APPLICATIONS = {
    "vgg16": ("VGG16", "caffe"),
    "vgg19": ("VGG19", "caffe"),
    "resnet50": ("ResNet50", "caffe"),
    "resnet101": ("ResNet101", "caffe"),
    "resnet152": ("ResNet152", "caffe"),
    "resnet50_v2": ("ResNet50V2", "tf"),
    "resnet101_v2": ("ResNet101V2", "tf"),
    "mobilenet": ("MobileNet", "tf"),
    "mobilenet_v2": ("MobileNetV2", "tf"),
    "mobilenet_v3_small": ("MobileNetV3Small", "none"),
    "mobilenet_v3_large": ("MobileNetV3Large", "none"),
    "inception_v3": ("InceptionV3", "tf"),
    "xception": ("Xception", "tf"),
    "densenet121": ("DenseNet121", "torch"),
    "densenet169": ("DenseNet169", "torch"),
    "efficientnet_b0": ("EfficientNetB0", "none"),
    "efficientnet_v2_b0": ("EfficientNetV2B0", "none"),
    "convnext_tiny": ("ConvNeXtTiny", "none"),
}

DEMO = "demo"
MODEL_FILES = (".keras", ".h5", ".hdf5")

# Functions Keras saves under names it cannot load back: a Dense(activation=tf.nn.softmax)
# is saved as 'softmax_v2', which is keras's softmax (the last axis).
COMPATIBILITY = {"softmax_v2": keras.activations.softmax}


class SourceError(ValueError):
    pass


@dataclass
class Source:
    model: keras.Model
    preprocess: str | None  # None: the caller must say
    classes: list[str] | None
    description: str


def _demo_file(name: str) -> Path:
    return Path(str(resources.files("camserve.demo") / name))


def read_labels(path) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def import_custom_objects(spec: str):
    """Imports a module by name or a .py file, so that the classes and functions it
    registers with @keras.saving.register_keras_serializable are found on loading."""
    try:
        if spec.endswith(".py"):
            path = Path(spec)
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or not path.is_file():
                raise SourceError(f"--custom-objects {spec}: no such file")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except SourceError:
        raise
    except Exception as err:  # noqa: BLE001 - the user's code: say where it failed
        raise SourceError(f"--custom-objects {spec}: importing it failed: {type(err).__name__}: {err}") from err


def _load_file(path: Path) -> keras.Model:
    try:
        return keras.models.load_model(path, compile=False, custom_objects=COMPATIBILITY)
    except Exception as err:  # noqa: BLE001 - Keras raises many kinds; the user needs one message
        text = str(err)
        unknown = re.search(r"Could not locate (class|function) '?([\w.>]+)'?", text) or re.search(
            r"Unknown (layer|activation|object)[^:]*: '?([\w.>]+)'?", text
        )
        if unknown:
            what = f"the {unknown.group(1)} {unknown.group(2)!r}, which Keras does not know"
        elif "safe_mode" in text:
            what = "a Lambda layer's Python code, which Keras only loads with safe_mode=False"
        else:
            what = text.splitlines()[0][:300]
        raise SourceError(
            f"cannot load {path}: it uses {what}. If the model uses your own layers, functions or losses, "
            "pass --custom-objects MODULE (a module name or a .py file that defines them with "
            "@keras.saving.register_keras_serializable()); Lambda layers must be rewritten as registered layers"
        ) from err


def load(
    source: str, weights: str = "imagenet", input_size: tuple[int, int] | None = None, custom_objects: str | None = None
) -> Source:
    if custom_objects:
        import_custom_objects(custom_objects)
    if source == DEMO:
        model = keras.models.load_model(_demo_file("model.keras"), compile=False)
        return Source(model, "scale", read_labels(_demo_file("labels.txt")), "bundled demo model")
    if source.lower() in APPLICATIONS:
        constructor, mode = APPLICATIONS[source.lower()]
        kwargs = {"weights": None if weights == "none" else weights}
        if input_size:
            kwargs["input_shape"] = (*input_size, 3)
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise SourceError(f"--weights {weights!r}: expected imagenet, none or an existing weights file")
        model = getattr(keras.applications, constructor)(**kwargs)
        return Source(model, mode, None, f"keras.applications.{constructor} (weights={weights})")
    path = Path(source)
    if path.suffix.lower() not in MODEL_FILES:
        known = ", ".join(sorted(APPLICATIONS))
        raise SourceError(f"{source!r} is neither a .keras/.h5/.hdf5 file nor a known application ({known}) nor 'demo'")
    if not path.is_file():
        raise SourceError(f"model file {source} does not exist")
    return Source(_load_file(path), None, None, str(path))
