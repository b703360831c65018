"""`camserve export` as users drive it: sources, versions, errors, and an
artifact that plain TensorFlow runs."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from keras import layers

from camserve.cli import main
from camserve.export.repository import read_metadata, versions
from tests import models


def export_cli(capsys, *args):
    code = main(["export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out.strip(), captured.err


@pytest.fixture(scope="module")
def open_size_model(tmp_path_factory):
    """A backbone with an open input size and a pooling head."""
    inputs = keras.Input((None, None, 3))
    x = layers.Conv2D(6, 3, strides=2, activation="relu", name="conv")(inputs)
    outputs = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    path = tmp_path_factory.mktemp("open") / "open.keras"
    keras.Model(inputs, outputs).save(path)
    return path


def test_open_input_size_needs_input_size(capsys, tmp_path, open_size_model):
    code, _, err = export_cli(capsys, open_size_model, "--repo", tmp_path, "--name", "m", "--preprocess", "tf")
    assert code == 1 and "--input-size HxW" in err
    code, out, err = export_cli(
        capsys, open_size_model, "--repo", tmp_path, "--name", "m", "--preprocess", "tf", "--input-size", "40x48"
    )
    assert code == 0, err
    meta = read_metadata(out)
    assert meta["input_size"] == [40, 48] and meta["feature_size"] == [19, 23]
    for step in ("build", "trace", "compile", "save", "verify", "publish"):
        assert step in err


def test_versions_count_up_and_are_immutable(capsys, tmp_path, open_size_model):
    # Numbering is what counts here: the plain graph, unverified (the export above of this very
    # model compiles with XLA and verifies).
    args = [open_size_model, "--repo", tmp_path, "--name", "m", "--preprocess", "scale", "--input-size", "16x16", "--no-xla", "--no-verify"]
    assert export_cli(capsys, *args)[0] == 0
    assert export_cli(capsys, *args)[0] == 0
    assert versions(tmp_path, "m") == [1, 2]
    code, _, err = export_cli(capsys, *args, "--version", "2")
    assert code == 1 and "already exists" in err
    assert export_cli(capsys, *args, "--version", "7")[0] == 0
    assert versions(tmp_path, "m") == [1, 2, 7]
    assert read_metadata(tmp_path / "m" / "7")["version"] == 7


def test_bad_layer_names_the_candidates(capsys, tmp_path):
    source = tmp_path / "nested.keras"
    models.nested().model.save(source)
    code, _, err = export_cli(capsys, source, "--repo", tmp_path, "--name", "n", "--preprocess", "scale", "--layer", "nope")
    assert code == 1
    assert "is not a layer" in err and "vgg.block2_conv2 [16, 16, 12]" in err and "head.head_conv [8, 8, 10]" in err
    code, _, err = export_cli(capsys, source, "--repo", tmp_path, "--name", "n", "--preprocess", "scale", "--layer", "head.avg")
    assert code == 1 and "not a 4-D feature map larger than 1x1" in err


def test_list_layers_prints_the_candidates_with_the_default_marked(capsys, tmp_path):
    source = tmp_path / "nested.keras"
    models.nested().model.save(source)
    code, out, _ = export_cli(capsys, source, "--list-layers")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()}
    assert "16 x 16 x 12" in rows["vgg.block2_conv2"] and "8 x 8 x 10" in rows["head.head_conv"]
    assert [path for path, line in rows.items() if "<- default" in line] == [models.nested().target]
    code, out, _ = export_cli(capsys, "demo", "--list-layers")
    assert code == 0 and "last_conv" in out and "<- default" in next(line for line in out.splitlines() if line.startswith("last_conv"))
    code, _, err = export_cli(capsys, "demo")
    assert code == 2 and "--repo and --name are required" in err


def test_model_without_feature_map_is_a_clear_error(capsys, tmp_path):
    inputs = keras.Input((8, 8, 3))
    outputs = layers.Dense(2, activation="softmax")(layers.Flatten()(inputs))
    source = tmp_path / "mlp.keras"
    keras.Model(inputs, outputs, name="mlp").save(source)
    code, _, err = export_cli(capsys, source, "--repo", tmp_path, "--name", "mlp", "--preprocess", "scale")
    assert code == 1 and "no layer of 'mlp' has a 4-D output larger than 1x1" in err


def test_missing_preprocess_and_wrong_labels(capsys, tmp_path):
    source = tmp_path / "seq.keras"
    models.sequential().model.save(source)
    code, _, err = export_cli(capsys, source, "--repo", tmp_path, "--name", "s")
    assert code == 1 and "--preprocess" in err
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    code, _, err = export_cli(capsys, source, "--repo", tmp_path, "--name", "s", "--preprocess", "scale", "--labels", labels)
    assert code == 1 and "2 labels for a model with 5 classes" in err
    assert versions(tmp_path, "s") == []


def test_user_model_is_not_mutated(exports):
    _, _, model32, _ = exports.get("sequential")
    assert model32.model.layers[-1].activation.__name__ == "softmax"
    x = np.random.default_rng(0).uniform(0, 1, (2, models.SIZE, models.SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(model32.model(x).numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_keras_application_exports_with_its_preprocessing(capsys, tmp_path):
    """What the name resolves to: preprocessing, default target, classes. XLA exports of
    keras.applications are checked against Keras in test_applications, float64 verification
    of deep conv nets in test_verify and test_zoo: here the plain graph, unverified."""
    code, out, err = export_cli(
        capsys, "mobilenet_v2", "--weights", "none", "--input-size", "64x64", "--repo", tmp_path, "--name", "mnv2", "--no-xla", "--no-verify"
    )
    assert code == 0, err
    meta = read_metadata(out)
    assert meta["preprocess"] == "tf" and meta["target_layer"] == "out_relu" and meta["num_classes"] == 1000


def test_saved_model_runs_with_plain_tensorflow_and_is_xla_compiled(exports):
    """A fresh interpreter in which camserve cannot even be imported."""
    path, *_ = exports.get("nested")
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "camserve":
                    raise ImportError("camserve is blocked in this process")
        sys.meta_path.insert(0, Block())
        import numpy as np, tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2
        explain = tf.saved_model.load({str(path)!r}).signatures["serving_default"]
        out = explain(images=np.zeros((3, 32, 32, 3), np.uint8), class_index=np.full(3, -1, np.int32),
                      method=np.zeros(3, np.int32))
        print(sorted(out), out["heatmap"].shape)
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString(open({str(path / "saved_model.pb")!r}, "rb").read())
        functions = proto.meta_graphs[0].graph_def.library.function
        print("xla", sum(f.attr["_XlaMustCompile"].b for f in functions if "_XlaMustCompile" in f.attr))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "['class_index', 'heatmap', 'heatmap_scale', 'logits', 'probabilities'] (3, 8, 8)"
    assert int(lines[1].split()[1]) >= 2  # explain and predict both carry the XLA attribute


def test_verification_catches_a_model_that_disagrees(exports):
    from camserve.export.verify import verify

    path, _, _, _ = exports.get("functional")
    # Logits 5% larger: same top-1 classes, so the comparison itself must notice.
    other, _ = models.build("functional", transform=lambda w: [*w[:-2], w[-2] * 1.05, w[-1] * 1.05])
    report = verify(path, other.model, [("block_out",)], "scale", 3, (models.SIZE, models.SIZE))
    assert not report.ok and report.logits_error == pytest.approx(0.05 / 1.05, rel=1e-3)


def test_no_xla_exports_plain_graphs_with_the_same_answers(capsys, tmp_path, exports, monkeypatch):
    """... tracing the model once: tf.saved_model.save traced every tf.function it was
    given again (under its own cache key), as long again as the first trace."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    from camserve.export.explainer import Explainer
    from tests import reference

    _, xla_saved, model32, _ = exports.get("functional")
    capsys.readouterr()  # the shared export's own steps, where this process made it
    traces = []
    explain = Explainer.explain
    monkeypatch.setattr(Explainer, "explain", lambda self, *args: traces.append(tf.inside_function()) or explain(self, *args))
    source = tmp_path / "functional.keras"
    model32.model.save(source)
    code, out, err = export_cli(capsys, source, "--repo", tmp_path, "--name", "plain", "--preprocess", "scale", "--no-xla")
    assert code == 0, err
    assert traces.count(True) == 1, "explain traced once"
    assert read_metadata(out)["xla"] is False and "compile," in err and "with XLA" not in err
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((tmp_path / "plain" / "1" / "saved_model.pb").read_bytes())
    functions = proto.meta_graphs[0].graph_def.library.function
    assert not any(f.attr["_XlaMustCompile"].b for f in functions if "_XlaMustCompile" in f.attr)
    images = reference.smooth_images(3, models.SIZE, seed=2)
    args = dict(images=images, class_index=np.array([-1, 0, 2], np.int32), method=np.array([0, 1, 2], np.int32))
    plain = tf.saved_model.load(out).signatures["serving_default"](**args)
    compiled = xla_saved.signatures["serving_default"](**args)
    for name in ("logits", "heatmap", "class_index"):
        np.testing.assert_allclose(plain[name].numpy(), compiled[name].numpy(), rtol=1e-4, atol=1e-5)
