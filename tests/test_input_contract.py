"""`--input-contract model`: the SavedModel also takes the model's own input as TF
Serving's clients send it. serving_default is what keras's own `model.export()`
serves (checked against a keras export of the same model, not against camserve's
idea of it), with the model's own outputs; explain_input explains that input with
explain's maps; explain and predict keep taking uint8 images; the default
contract is unchanged."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from tensorflow.core.protobuf import saved_model_pb2

from camserve import cli
from camserve.export import exporter, module, verify
from camserve.export.exporter import ExportError, ExportOptions, export
from camserve.export.preprocess import preprocess
from camserve.export.repository import read_metadata, versions
from tests import models, reference


def named_input(dtype="float32"):
    """A model whose keras.Input has a name (keras export names the signature's input after it)."""
    inputs = keras.Input((24, 40, 3), name="pixels", dtype=dtype)
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv", dtype=dtype)(inputs)
    out = layers.Dense(4, activation="softmax", name="dense", dtype=dtype)(layers.GlobalAveragePooling2D(dtype=dtype)(x))
    return keras.Model(inputs, out, name="named")


def built(kind):
    """(keras model object, (H, W), channels) for each kind of model tested."""
    if kind == "named":
        keras.utils.set_random_seed(1)
        return named_input(), (24, 40), 3
    test_model, _ = models.build(kind)
    return test_model.model, test_model.size, test_model.channels


# A non-square RGB softmax, a one-channel model, a one-unit sigmoid (binary head), a named keras.Input,
# a Sequential (which keras exports from its own inputs list).
KINDS = ("wide", "gray", "binary", "named", "sequential")


class Exported:
    def __init__(self, kind, root):
        self.original, self.size, self.channels = built(kind)
        self.source = root / f"{kind}.keras"
        self.original.save(self.source)
        # XLA only where it is the point (test_the_contracts_signatures_are_xla_compiled): each compile costs seconds.
        if kind == "named":  # through the command line, as users give the flag
            flags = ["--repo", str(root / "repo"), "--name", kind, "--preprocess", "scale", "--input-contract", "model", "--no-xla"]
            assert cli.main(["export", str(self.source), *flags]) == 0
            self.path = root / "repo" / kind / "1"
        else:
            options = ExportOptions(source=str(self.source), repo=str(root / "repo"), name=kind, preprocess="scale", input_contract="model")
            options.xla = kind == "wide"
            self.path = export(options)
        # The model camserve exported is the one in the file: keras loads it as camserve does.
        self.model = keras.models.load_model(self.source, compile=False)
        self.signatures = tf.saved_model.load(str(self.path)).signatures
        self.metadata = read_metadata(self.path)

    def keras_export(self, folder, model=None):
        """keras's own export of the model: {input alias: (dtype, shape)}, {output alias: (dtype, shape)}."""
        (model or self.model).export(str(folder), verbose=False)
        return aliases(tf.saved_model.load(str(folder)).signatures["serving_default"])


def aliases(signature):
    _, inputs = signature.structured_input_signature
    described = lambda specs: {k: (v.dtype.name, tuple(v.shape)) for k, v in specs.items()}  # noqa: E731
    return described(inputs), described(signature.structured_outputs)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    done = {}

    def get(kind):
        if kind not in done:
            done[kind] = Exported(kind, root)
        return done[kind]

    return get


def model_inputs(size, channels, count=4, seed=0):
    """Float inputs as a TF Serving client sends them: any values, not only what preprocessing gives."""
    return np.random.default_rng(seed).uniform(-0.5, 1.5, (count, *size, channels)).astype(np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_serving_default_is_what_keras_export_serves(exported, kind, tmp_path):
    e = exported(kind)
    want_in, want_out = e.keras_export(tmp_path / "keras")
    got_in, got_out = aliases(e.signatures["serving_default"])
    assert got_in == want_in and got_out == want_out
    (alias,) = want_in
    assert want_in[alias] == ("float32", (None, *e.size, e.channels)) and list(want_out) == ["output_0"]
    if kind == "named":  # the name given is kept through the file: the original object's export says the same
        assert alias == "pixels"
        assert e.keras_export(tmp_path / "original", e.original) == (want_in, want_out)


@pytest.mark.parametrize("kind", KINDS)
def test_serving_default_answers_the_models_own_outputs(exported, kind):
    e = exported(kind)
    x = model_inputs(e.size, e.channels)
    (alias,), _ = aliases(e.signatures["serving_default"])
    got = e.signatures["serving_default"](**{alias: tf.constant(x)})
    assert list(got) == ["output_0"]
    want = e.original(x, training=False).numpy()
    assert got["output_0"].shape == want.shape  # a binary head: the one sigmoid unit, not two classes
    np.testing.assert_allclose(got["output_0"].numpy(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_explain_input_explains_as_explain_does(exported, kind):
    e = exported(kind)
    alias = e.metadata["input_contract"]["input"]
    count = len(e.metadata["methods"]) * 2
    images = reference.smooth_images(count, e.size, seed=7)
    class_index = np.resize(np.array([-1, 0, 1, -2], np.int32), count)
    method = np.resize(np.arange(len(e.metadata["methods"]), dtype=np.int32), count)
    by_images = e.signatures["explain"](images=images, class_index=class_index, method=method)
    x = preprocess(images, "scale", e.channels)
    by_input = e.signatures["explain_input"](**{alias: x, "class_index": class_index, "method": method})
    assert set(by_input) == {"output_0", *by_images}
    np.testing.assert_array_equal(by_input["class_index"], by_images["class_index"])
    assert by_images["heatmap"].numpy().max(axis=(1, 2)).min() > 0  # every map has something to compare
    for name in ("heatmap", "heatmap_scale", "logits", "probabilities"):
        np.testing.assert_allclose(by_input[name].numpy(), by_images[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(by_input["output_0"].numpy(), e.original(x, training=False).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_names_the_contract_and_camserves_own_signatures_stay(exported, kind, tmp_path):
    e = exported(kind)
    (alias,), _ = e.keras_export(tmp_path / "keras")
    assert e.metadata["input_contract"] == {
        "signature": "serving_default",
        "explain_signature": "explain_input",
        "input": alias,
        "dtype": "float32",
        "shape": [*e.size, e.channels],
        "output": "output_0",
    }
    assert e.metadata["input_channels"] == e.channels and e.metadata["preprocess"] == "scale"
    explain_in, _ = aliases(e.signatures["explain"])
    assert explain_in["images"] == ("uint8", (None, *e.size, 3))
    assert aliases(e.signatures["predict"])[0] == {"images": ("uint8", (None, *e.size, 3))}
    assert set(aliases(e.signatures["explain_input"])[0]) == {alias, "class_index", "method"}


def test_the_contracts_signatures_are_xla_compiled(exported):
    e = exported("wide")
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((e.path / "saved_model.pb").read_bytes())
    compiled = [f.signature.name for f in proto.meta_graphs[0].graph_def.library.function if f.attr["_XlaMustCompile"].b]
    for name in ("_serve", "_explain_input", "_explain", "_predict"):
        assert any(f"_inference_{name}_" in each for each in compiled), (name, compiled)


def test_the_images_contract_is_unchanged(exports):
    path, saved, *_ = exports.get("wide")
    signatures = saved.signatures
    assert sorted(signatures) == ["explain", "predict", "serving_default"]
    assert aliases(signatures["serving_default"]) == aliases(signatures["explain"])
    assert set(aliases(signatures["serving_default"])[0]) == {"images", "class_index", "method"}
    assert "input_contract" not in read_metadata(path)


def test_help_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--input-contract {images,model}" in out and "model.export()" in out and "explain_input" in out


def test_names_the_contract_cannot_keep_are_refused(tmp_path):
    inputs = keras.Input((16, 16, 3), name="method")
    out = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inputs)))
    keras.Model(inputs, out).save(tmp_path / "clash.keras")
    options = dict(source=str(tmp_path / "clash.keras"), repo=str(tmp_path / "repo"), name="clash", preprocess="scale", xla=False)
    with pytest.raises(ExportError, match="'method'"):
        export(ExportOptions(**options, input_contract="model"))
    with pytest.raises(ExportError, match="--input-contract"):
        export(ExportOptions(**options, input_contract="tensors"))
    assert versions(tmp_path / "repo", "clash") == []


@pytest.fixture(scope="module")
def wrong_output(tmp_path_factory):
    """A source whose contract would answer the logits where the model outputs probabilities."""
    root = tmp_path_factory.mktemp("wrong")
    model, _ = models.build("functional")
    model.model.save(root / "m.keras")
    return root


def test_a_serving_default_that_disagrees_with_the_model_is_refused_at_compile(wrong_output, monkeypatch):
    monkeypatch.setattr(module.InputContract, "original", lambda self, outputs: outputs["logits"])
    options = ExportOptions(source=str(wrong_output / "m.keras"), repo=str(wrong_output / "a"), name="m", preprocess="scale", xla=False, verify=False, input_contract="model")
    with pytest.raises(verify.VerificationError, match="serving_default differs from the model's outputs"):
        export(options)
    assert not (wrong_output / "a" / "m").exists() or versions(wrong_output / "a", "m") == []


def test_verification_refuses_a_contract_that_disagrees(wrong_output, monkeypatch):
    """The reloaded SavedModel is checked on its own, even when the compile-time check is passed."""
    monkeypatch.setattr(module.InputContract, "original", lambda self, outputs: outputs["logits"])
    monkeypatch.setattr(exporter, "check_contract", lambda *args: (0.0, 0.0))
    options = ExportOptions(source=str(wrong_output / "m.keras"), repo=str(wrong_output / "b"), name="m", preprocess="scale", xla=False, input_contract="model")
    with pytest.raises(verify.VerificationError, match="model contract: serving_default"):
        export(options)
    assert versions(wrong_output / "b", "m") == []
    assert not any((wrong_output / "b" / "m").iterdir())  # the staging folder is gone too


def test_a_keras2_saved_model_keeps_its_own_names(tmp_path):
    tf_keras = pytest.importorskip("tf_keras", reason="tf-keras is not installed: pip install -e '.[test]'")
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((20, 28, 3), name="image_in")
    x = tf_keras.layers.Conv2D(6, 3, activation="relu", name="c1")(inputs)
    out = tf_keras.layers.Dense(3, activation="softmax", name="scores")(tf_keras.layers.GlobalAveragePooling2D()(x))
    model = tf_keras.Model(inputs, out)
    model.save(tmp_path / "saved")  # Keras 2's SavedModel format, a directory
    own_in, own_out = aliases(tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"])
    assert list(own_out) != ["output_0"]  # Keras 2 names its output after the last layer: not keras 3's name

    path = export(ExportOptions(source=str(tmp_path / "saved"), repo=str(tmp_path / "repo"), name="old", preprocess="scale", input_contract="model"))
    signatures = tf.saved_model.load(str(path)).signatures
    assert aliases(signatures["serving_default"]) == (own_in, own_out)
    (alias,), (output,) = own_in, own_out
    contract = read_metadata(path)["input_contract"]
    assert (contract["input"], contract["output"], contract["shape"]) == (alias, output, [20, 28, 3])
    x = model_inputs((20, 28), 3, seed=2)
    got = signatures["serving_default"](**{alias: tf.constant(x)})[output].numpy()
    np.testing.assert_allclose(got, model(x, training=False).numpy(), rtol=1e-4, atol=1e-6)
    explained = signatures["explain_input"](**{alias: x, "class_index": np.full(4, -1, np.int32), "method": np.zeros(4, np.int32)})
    assert set(explained) == {output, "logits", "probabilities", "class_index", "heatmap", "heatmap_scale"}
    assert json.loads((path / "assets.extra" / "camserve.json").read_text())["input_contract"]["output"] == output
