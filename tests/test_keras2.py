"""Keras 2 SavedModel directories (`model.save("dir")` under tf-keras), which Keras 3
cannot open as models: exported through tf-keras, with the probabilities of the
Keras 2 model itself and maps equal to a Grad-CAM computed with Keras 2 eagerly."""

import numpy as np
import pytest
import tensorflow as tf

from camserve import cli
from tests import reference

tf_keras = pytest.importorskip("tf_keras", reason="tf-keras is not installed: pip install -e '.[test]'")

SIZE = (40, 56)  # non-square, one channel: a grey-level model
CLASSES = 3


@pytest.fixture(scope="module")
def keras2(tmp_path_factory):
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((*SIZE, 1))
    x = tf_keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inputs)
    x = tf_keras.layers.BatchNormalization(name="bn")(x)
    x = tf_keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="c2")(x)
    out = tf_keras.layers.Dense(CLASSES, activation="softmax", name="head")(tf_keras.layers.GlobalAveragePooling2D()(x))
    model = tf_keras.Model(inputs, out)
    root = tmp_path_factory.mktemp("keras2")
    model.save(root / "saved")  # a directory: Keras 2's SavedModel format
    assert (root / "saved" / "saved_model.pb").is_file()
    return model, root


def test_a_keras2_saved_model_exports_with_its_own_outputs(keras2, capsys):
    model, root = keras2
    assert cli.main(["export", str(root / "saved"), "--repo", str(root / "repo"), "--name", "old", "--preprocess", "scale"]) == 0
    explain = tf.saved_model.load(str(root / "repo" / "old" / "1")).signatures["serving_default"]
    images = reference.smooth_images(4, SIZE, seed=3)
    got = explain(images=images, class_index=np.full(4, -1, np.int32), method=np.zeros(4, np.int32))
    # Luminance as ITU-R BT.601 weighs it, then the model's own scale to [0, 1].
    grey = (images.astype(np.float64) @ [0.2989, 0.5870, 0.1140])[..., None] / 255.0
    np.testing.assert_allclose(got["probabilities"].numpy(), model(grey.astype(np.float32)).numpy(), rtol=1e-3, atol=1e-5)
    # Grad-CAM at the last conv layer (the default), by Keras 2 itself.
    probe = tf_keras.Model(model.inputs, [model.get_layer("c2").output, model.get_layer("head").input])
    head = model.get_layer("head")
    for i in range(4):
        with tf.GradientTape() as tape:
            a, pooled = probe(grey[i : i + 1].astype(np.float32), training=False)
            logits = pooled @ head.kernel + head.bias
            chosen = int(np.argmax(logits[0]))
            score = logits[0, chosen]
        g = tape.gradient(score, a).numpy()[0].astype(np.float64)
        a = a.numpy()[0].astype(np.float64)
        cam = reference.method_map("gradcam", a, g)
        raw = got["heatmap"][i].numpy() * got["heatmap_scale"][i].numpy()
        assert got["class_index"][i] == chosen
        assert cam.max() > 0
        assert np.abs(raw - cam).max() <= 1e-3 * np.abs(a * g).sum(axis=-1).max(), i


def test_a_keras2_h5_file_loads_as_the_same_model(keras2):
    """Keras 2's .h5 files Keras 3 reads itself (the SavedModel path goes through one)."""
    from camserve.export import source

    model, root = keras2
    model.save(root / "old.h5")
    loaded = source.load(str(root / "old.h5")).model
    grey = reference.smooth_images(2, SIZE, seed=4)[..., :1].astype(np.float32) / 255.0
    np.testing.assert_allclose(loaded(grey).numpy(), model(grey).numpy(), rtol=1e-5, atol=1e-6)


def test_a_saved_model_without_a_keras_model_is_refused(tmp_path, capsys):
    module = tf.Module()
    module.f = tf.function(lambda x: x * 2, input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "plain"))
    assert cli.main(["export", str(tmp_path / "plain"), "--repo", str(tmp_path / "repo"), "--name", "x", "--preprocess", "scale"]) == 1
    assert "keeps no layers to explain" in capsys.readouterr().err
