"""Heads as users write them, at export: recognised, overridden with --head, or
refused with a message that says what to pass; and the model files users bring
(.hdf5, custom layers)."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import layers

from camserve.cli import main
from camserve.export.repository import read_metadata
from tests import models, reference


def export(capsys, tmp_path, kind, *args, name="m"):
    source = tmp_path / f"{kind}.keras"
    if not source.exists():
        models.build(kind)[0].model.save(source)
    code = main(["export", str(source), "--repo", str(tmp_path / "repo"), "--name", name, "--preprocess", "scale", *args])
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err


def outputs(path, count=4):
    import tensorflow as tf

    explain = tf.saved_model.load(str(path)).signatures["serving_default"]
    images = reference.smooth_images(count, models.SIZE, seed=1)
    out = explain(images=images, class_index=np.full(count, -1, np.int32), method=np.zeros(count, np.int32))
    return images, {k: v.numpy() for k, v in out.items()}


@pytest.mark.parametrize("kind, layer", [("hard_sigmoid", "dense"), ("log_softmax", "log_softmax")])
def test_unrecognised_normalising_head_is_refused(capsys, tmp_path, kind, layer):
    code, _, err = export(capsys, tmp_path, kind)
    assert code == 1
    assert f"last layer {layer!r}" in err and "normalises" in err and "--head" in err
    assert not (tmp_path / "repo" / "m" / "1").exists()


def test_head_linear_explains_an_unrecognised_head_as_it_is(capsys, tmp_path):
    code, out, err = export(capsys, tmp_path, "hard_sigmoid", "--head", "linear")
    assert code == 0, err
    assert read_metadata(out)["head"] == "linear"
    test_model, _ = models.build("hard_sigmoid")
    images, got = outputs(out)
    np.testing.assert_allclose(got["logits"], test_model.model(images / 255.0).numpy(), rtol=1e-4, atol=1e-6)


def test_head_sigmoid_on_a_model_that_ends_in_logits(capsys, tmp_path):
    """A multi-label model trained with from_logits=True ends in a plain Dense: --head
    sigmoid keeps its output as logits and gives per-class sigmoid probabilities."""
    code, out, err = export(capsys, tmp_path, "logits", "--head", "sigmoid")
    assert code == 0, err
    test_model, _ = models.build("logits")
    images, got = outputs(out)
    z = test_model.model(images / 255.0).numpy().astype(np.float64)
    np.testing.assert_allclose(got["logits"], z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["probabilities"], 1 / (1 + np.exp(-z)), rtol=1e-4, atol=1e-6)


def test_a_wrong_head_override_is_caught_against_the_models_outputs(capsys, tmp_path):
    code, _, err = export(capsys, tmp_path, "sigmoid", "--head", "softmax")
    assert code == 1 and "differ from the model's own outputs" in err and "'dense'" in err


def test_head_override_must_fit_the_output_units(capsys, tmp_path):
    code, _, err = export(capsys, tmp_path, "sigmoid", "--head", "binary")
    assert code == 1 and "--head binary needs one output unit; this model has 5" in err
    code, _, err = export(capsys, tmp_path, "binary", "--head", "sigmoid")
    assert code == 1 and "--head binary" in err


def test_softmax_over_one_unit_is_refused(capsys, tmp_path):
    inputs = keras.Input((models.SIZE, models.SIZE, 3))
    x = layers.Conv2D(4, 3, activation="relu")(inputs)
    outputs_ = layers.Dense(1, activation="softmax", name="always_one")(layers.GlobalAveragePooling2D()(x))
    source = tmp_path / "one.keras"
    keras.Model(inputs, outputs_).save(source)
    code = main(["export", str(source), "--repo", str(tmp_path), "--name", "one", "--preprocess", "scale"])
    err = capsys.readouterr().err
    assert code == 1 and "'always_one' is a softmax over one unit" in err


def test_probabilities_from_an_unrecognised_multi_input_head_are_refused(capsys, tmp_path):
    """The average of two softmax heads normalises, but no single op can be probed:
    the outputs themselves give it away."""
    inputs = keras.Input((models.SIZE, models.SIZE, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3, activation="relu")(inputs))
    heads = [layers.Dense(3, activation="softmax")(x) for _ in range(2)]
    source = tmp_path / "ensemble.keras"
    keras.Model(inputs, layers.Average(name="mean")(heads)).save(source)
    code = main(["export", str(source), "--repo", str(tmp_path), "--name", "e", "--preprocess", "scale"])
    err = capsys.readouterr().err
    assert code == 1 and "each row sums to 1" in err and "'mean'" in err


def test_hdf5_files_load(capsys, tmp_path):
    model = models.build("functional")[0].model
    model.save(tmp_path / "model.h5")
    (tmp_path / "model.h5").rename(tmp_path / "model.hdf5")
    code = main(["export", str(tmp_path / "model.hdf5"), "--repo", str(tmp_path), "--name", "h", "--preprocess", "scale"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert read_metadata(captured.out.strip())["head"] == "softmax"


CUSTOM_LAYER = """
import keras

@keras.saving.register_keras_serializable(package="users_lab")
class Brighten(keras.layers.Layer):
    def call(self, x):
        return x * 1.5
"""


def test_custom_objects_module_is_imported_before_loading(tmp_path):
    """Saved where the custom layer is registered, exported in a fresh process that
    only knows it through --custom-objects."""
    (tmp_path / "users_layers.py").write_text(CUSTOM_LAYER)
    save = textwrap.dedent(
        f"""
        import sys; sys.path.insert(0, {str(tmp_path)!r})
        import keras, users_layers
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(4, 3, activation="relu")(users_layers.Brighten()(inputs))
        out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
        keras.Model(inputs, out).save({str(tmp_path / "custom.keras")!r})
        """
    )
    subprocess.run([sys.executable, "-c", save], check=True, capture_output=True, timeout=300)
    command = [sys.executable, "-m", "camserve", "export", str(tmp_path / "custom.keras"), "--repo", str(tmp_path / "repo")]
    command += ["--name", "c", "--preprocess", "scale", "--no-verify", "--no-xla"]  # loading is the point
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    assert "Brighten" in refused.stderr and "--custom-objects" in refused.stderr, refused.stderr[-2000:]
    done = subprocess.run([*command, "--custom-objects", str(tmp_path / "users_layers.py")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def head_server(exports, tmp_path_factory):
    """binary and sigmoid heads served side by side."""
    import shutil

    from camserve.server.ops.process import serving

    repo = tmp_path_factory.mktemp("heads") / "repo"
    for kind in ("binary", "sigmoid"):
        shutil.copytree(exports.get(kind)[0], repo / kind / "1")
    # One image a call: one batch size to warm up.
    with serving(repo, tmp_path_factory.mktemp("logs") / "server.log", "--max-batch-size", "1") as process:
        yield process


def test_binary_head_over_the_wire_has_two_classes_and_both_maps(exports, head_server):
    from camserve.client import Client

    _, _, model32, model64 = exports.get("binary")
    image = reference.smooth_images(1, models.SIZE, seed=30)[0]
    p = float(model32.model(image[None] / 255.0).numpy()[0, 0])
    with Client(head_server.target, model="binary") as client:
        assert client.get_model("binary").head == "binary" and client.get_model("binary").num_classes == 2
        maps = {}
        for class_index in (0, 1):
            result = client.explain(image, class_index=class_index, return_scores=True)
            np.testing.assert_allclose(result.probabilities, [1 - p, p], rtol=1e-4, atol=1e-6)
            want = reference.explain_one(model64, image, class_index, "gradcam")
            np.testing.assert_allclose(result.heatmap, want["heatmap"], atol=1e-4)
            maps[class_index] = result.heatmap
        top1 = client.explain(image)
        assert top1.class_index == int(p > 0.5) and [c.index for c in top1.top_k] == [int(p > 0.5), int(p <= 0.5)]
    assert maps[0].max() > 0 and maps[1].max() > 0 and not np.allclose(maps[0], maps[1])


def test_sigmoid_head_over_the_wire_gives_per_class_probabilities(exports, head_server):
    from camserve.client import Client

    _, _, model32, _ = exports.get("sigmoid")
    image = reference.smooth_images(1, models.SIZE, seed=31)[0]
    own = model32.model(image[None] / 255.0).numpy()[0]
    with Client(head_server.target, model="sigmoid") as client:
        assert client.get_model("sigmoid").head == "sigmoid"
        result = client.explain(image, return_scores=True, top_k=models.CLASSES)
    np.testing.assert_allclose(result.probabilities, own, rtol=1e-4, atol=1e-6)
    assert result.class_index == int(own.argmax())
    assert [c.index for c in result.top_k] == list(np.argsort(-own, kind="stable"))
