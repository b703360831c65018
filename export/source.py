"""Where a model comes from: a .keras/.h5 file, a keras.applications name, or
`demo`, the bundled shapes classifier."""

from __future__ import annotations

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


def load(source: str, weights: str = "imagenet", input_size: tuple[int, int] | None = None) -> Source:
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
    if path.suffix not in (".keras", ".h5"):
        known = ", ".join(sorted(APPLICATIONS))
        raise SourceError(f"{source!r} is neither a .keras/.h5 file nor a known application ({known}) nor 'demo'")
    if not path.is_file():
        raise SourceError(f"model file {source} does not exist")
    return Source(keras.models.load_model(path, compile=False), None, None, str(path))
