"""Where a model comes from: a .keras/.h5 file, a Keras 2 SavedModel directory,
a keras.applications name, or `demo`, the bundled shapes classifier."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import keras

from . import hub

# The preprocessing each keras.applications family's weights expect, by the module its
# constructors live in: the mode its preprocess_input applies, "none" where that is the
# identity because the model rescales inside (tests/test_applications.py checks each
# against keras). A family Keras adds later is accepted with no mode: the caller says.
FAMILY_PREPROCESS = {
    "convnext": "none",
    "densenet": "torch",
    "efficientnet": "none",
    "efficientnet_v2": "none",
    "inception_resnet_v2": "tf",
    "inception_v3": "tf",
    "mobilenet": "tf",
    "mobilenet_v2": "tf",
    "mobilenet_v3": "none",
    "nasnet": "tf",
    "resnet": "caffe",
    "resnet_v2": "tf",
    "vgg16": "caffe",
    "vgg19": "caffe",
    "xception": "tf",
}

# A word boundary of a CamelCase name, except before or inside Net/NeXt, which belong to
# the word before: MobileNetV3Small -> mobilenet_v3_small, ConvNeXtXLarge -> convnext_xlarge.
_WORD = re.compile(r"(?<=[a-z0-9])(?<!Ne)(?=[A-Z])(?!Ne[tX])")


@dataclass(frozen=True)
class Application:
    constructor: str  # its name in keras.applications
    preprocess: str | None  # None: a family FAMILY_PREPROCESS does not know


def snake_case(constructor: str) -> str:
    return _WORD.sub("_", constructor).lower()


def _applications() -> dict[str, Application]:
    """Every constructor keras.applications exposes, under its lower-cased CamelCase name
    (what `source.lower()` gives for EfficientNetV2B0) and its snake_case one."""
    table = {}
    for name, constructor in inspect.getmembers(keras.applications, inspect.isfunction):
        family = constructor.__module__.rpartition(".")[2]
        table[name.lower()] = table[snake_case(name)] = Application(name, FAMILY_PREPROCESS.get(family))
    return table


APPLICATIONS = _applications()

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
    preprocess_from: str | None = None  # what fixes the mode, when --preprocess may not change it
    saved_model: Path | None = None  # the SavedModel directory it was read from, whose serving signature names its tensors


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
        if "keras_hub" in text and importlib.util.find_spec("keras_hub") is None:
            raise SourceError(f"cannot load {path}: it is a keras-hub model; install camserve[hub] (keras-hub)") from err
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


def _keras2_saved_model(path: Path) -> keras.Model:
    """A Keras 2 SavedModel directory (`model.save("dir")` before Keras 3), as a Keras 3
    model. Keras 3 reads only its inference function (TFSMLayer), which exposes no
    layer to explain; tf-keras (Keras 2) reads the model, and saves it as the legacy
    .h5 file Keras 3 does load, layers and weights."""
    if importlib.util.find_spec("tf_keras") is None:
        raise SourceError(f"{path} is a SavedModel directory: Keras 2 models saved so are read with tf-keras; install camserve[keras2]")
    import tempfile

    import tf_keras

    problem = "it keeps no Keras model"
    try:
        model = tf_keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - tf-keras raises many kinds; the user needs one message
        model, problem = None, str(err).splitlines()[0][:300]
    if not isinstance(model, tf_keras.Model):
        raise SourceError(
            f"cannot load {path} with tf-keras: {problem}. camserve explains Keras models: a SavedModel written by "
            "tf.saved_model.save or model.export() keeps no layers to explain; export the Keras model itself"
        )
    with tempfile.TemporaryDirectory() as folder:
        legacy = Path(folder) / f"{model.name}.h5"
        model.save(legacy)
        return _load_file(legacy)


def serving_aliases(path: Path) -> tuple[str, str]:
    """The (input, output) aliases of a SavedModel's `serving_default` signature (Keras 2
    names the input after its Input layer, the output after the last layer), read from
    saved_model.pb without loading its functions."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags] or list(saved.meta_graphs)
    signature = graphs[0].signature_def.get("serving_default") if graphs else None
    if signature is None or len(signature.inputs) != 1 or len(signature.outputs) != 1:
        found = "none" if signature is None else f"inputs {sorted(signature.inputs)}, outputs {sorted(signature.outputs)}"
        raise SourceError(f"{path}: its serving_default signature ({found}) has not one input and one output to keep as the model's contract")
    return next(iter(signature.inputs)), next(iter(signature.outputs))


def load(
    source: str, weights: str = "imagenet", input_size: tuple[int, int] | None = None, custom_objects: str | None = None
) -> Source:
    if custom_objects:
        import_custom_objects(custom_objects)
    if source == DEMO:
        model = keras.models.load_model(_demo_file("model.keras"), compile=False)
        return Source(model, "scale", read_labels(_demo_file("labels.txt")), "bundled demo model")
    if source.lower() in APPLICATIONS:
        return _application(APPLICATIONS[source.lower()], weights, input_size)
    path = Path(source)
    if (path / "saved_model.pb").is_file():
        return Source(_keras2_saved_model(path), None, None, f"{path} (a Keras 2 SavedModel)", saved_model=path)
    if path.suffix.lower() not in MODEL_FILES:
        raise SourceError(f"{source!r} is neither a .keras/.h5/.hdf5 file, nor a Keras 2 SavedModel directory, nor 'demo', nor a keras.applications name{_suggest(source)}")
    if not path.is_file():
        raise SourceError(f"model file {source} does not exist")
    model = _load_file(path)
    try:
        mode = hub.preprocess_mode(model)
    except ValueError as err:
        raise SourceError(f"cannot export {path}: {err}") from err
    return Source(model, mode, None, str(path), "its keras-hub preprocessor" if mode else None)


def _application(application: Application, weights: str, input_size: tuple[int, int] | None) -> Source:
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise SourceError(f"--weights {weights!r}: expected imagenet, none or an existing weights file")
    kwargs = {"weights": None if weights == "none" else weights}
    if input_size:
        kwargs["input_shape"] = (*input_size, 3)
    name = application.constructor
    try:
        model = getattr(keras.applications, name)(**kwargs)
    except ValueError as err:
        # Each constructor checks its own minimum (32x32 for most, 71 or 75 for some) before building.
        minimum = re.match(r"Input size must be at least (\d+x\d+)", str(err))
        if minimum is None:
            raise
        h, w = input_size
        raise SourceError(f"--input-size {h}x{w} is too small for {name}: it takes at least {minimum.group(1)}") from err
    return Source(model, application.preprocess, None, f"keras.applications.{name} (weights={weights})")


def _suggest(source: str) -> str:
    """The application names closest to an unknown one, spelt the way the user spells them."""
    names = {app.constructor for app in APPLICATIONS.values()}
    if source.islower():
        names = {snake_case(name) for name in names}
    by_key = {name.lower(): name for name in names}
    close = difflib.get_close_matches(source.lower(), by_key, n=5)
    if close:
        return f"; did you mean {', '.join(by_key[key] for key in close)}?"
    return f" (one of {', '.join(sorted(names))})"
