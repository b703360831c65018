"""Models built under a mixed-precision policy: float16 (or bfloat16) maps differ from
float32 ones by about 1e-3 and would never verify, so the export computes in float32
(the variables are float32 already). Probabilities equal the same model built in
float32; Grad-CAM equals one computed here with a tape on that float32 model."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import reference

SIZE = (40, 56)


def build():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    logits = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32", name="probs")(logits))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_a_mixed_precision_model_exports_verified_in_float32(policy, tmp_path):
    from camserve.export.exporter import ExportOptions, export

    keras.config.set_dtype_policy(policy)
    try:
        mixed = build()
    finally:
        keras.config.set_dtype_policy("float32")
    plain = build()
    plain.set_weights(mixed.get_weights())
    assert mixed.get_layer("c2").compute_dtype != "float32"
    mixed.save(tmp_path / "mixed.keras")
    path = export(ExportOptions(source=str(tmp_path / "mixed.keras"), repo=str(tmp_path / "repo"), name="mixed", preprocess="scale"))
    assert json.loads((path / "assets.extra" / "camserve.json").read_text())["target_layer"] == "c2"
    explain = tf.saved_model.load(str(path)).signatures["serving_default"]
    images = reference.smooth_images(3, SIZE, seed=2)
    got = explain(images=images, class_index=np.full(3, -1, np.int32), method=np.zeros(3, np.int32))
    x = images.astype(np.float32) / 255.0
    np.testing.assert_allclose(got["probabilities"].numpy(), plain(x).numpy(), rtol=1e-4, atol=1e-6)
    probe = keras.Model(plain.inputs, [plain.get_layer("c2").output, plain.get_layer("logits").output])
    with tf.GradientTape() as tape:
        a, logits = probe(x)
        score = tf.reduce_sum(tf.reduce_max(logits, axis=-1))  # each image's top class
    g = tape.gradient(score, a).numpy().astype(np.float64)
    for i in range(3):
        cam = reference.method_map("gradcam", a[i].numpy().astype(np.float64), g[i])
        raw = got["heatmap"][i].numpy() * got["heatmap_scale"][i].numpy()
        assert cam.max() > 0 and np.abs(raw - cam).max() <= 1e-4 * np.abs(a[i].numpy() * g[i]).sum(axis=-1).max()
