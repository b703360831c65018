"""Export verification judges each map against the scale of the terms it is summed
from: a correct model whose maps cancel (a ConvNeXt backbone's LayerNorm outputs
under a new head) is published, and a wrong map is still refused, naming the method."""

import io
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from camserve.export import exporter, verify
from camserve.export.explainer import COUNTERFACTUAL, FUSIONS, LAYER_CODE, Explainer
from camserve.export.methods import CAM_NAMES as NAMES
from camserve.progress import Steps
from tests import models, reference

WIDTHS = (8, 16, 384, 32)  # one block a stage; the target's stage as wide as ConvNeXtTiny's


def convnext(dtype="float32"):
    """A ConvNeXt backbone laid out as keras.applications builds it: a 4x4/4 conv stem and
    LayerNorm; per stage a block (7x7 depthwise conv, LayerNorm, 4x pointwise expansion
    with GELU, projection with its layer scale folded in, added to the block's input),
    LayerNorm and a 2x2/2 conv between stages, a final LayerNorm. Used as a layer under
    GlobalAveragePooling2D and Dense(5, softmax). At 32x32 the last stage is 1x1, so the
    target is the LayerNorm before the last downsampling conv, 2x2, as in ConvNeXtTiny."""

    def norm(name):
        return layers.LayerNormalization(epsilon=1e-6, name=name, dtype=dtype)

    def block(stage, width):
        parts = [
            layers.DepthwiseConv2D(7, padding="same", name=f"stage{stage}_depthwise", dtype=dtype),
            norm(f"stage{stage}_norm"),
            layers.Dense(4 * width, activation="gelu", name=f"stage{stage}_expand", dtype=dtype),
            layers.Dense(width, name=f"stage{stage}_project", dtype=dtype),
        ]
        add = layers.Add(name=f"stage{stage}_out", dtype=dtype)
        return lambda x: add([x, models._chain(*parts)(x)])

    sequence = [layers.Conv2D(WIDTHS[0], 4, strides=4, name="stem", dtype=dtype), norm("stem_norm")]
    for i, width in enumerate(WIDTHS):
        if i:
            sequence += [norm(f"down{i}_norm"), layers.Conv2D(width, 2, strides=2, name=f"down{i}", dtype=dtype)]
        sequence.append(block(i, width))
    sequence.append(norm("final_norm"))
    trunk, rest = sequence[:-3], sequence[-3:]  # the target down3_norm, then down3, the last block, final_norm
    gap = layers.GlobalAveragePooling2D(name="gap", dtype=dtype)
    dense = layers.Dense(models.CLASSES, activation="softmax", name="dense", dtype=dtype)

    backbone_in = keras.Input((models.SIZE, models.SIZE, 3), dtype=dtype)
    backbone = keras.Model(backbone_in, models._chain(*sequence)(backbone_in), name="convnext")
    inputs = keras.Input((models.SIZE, models.SIZE, 3), dtype=dtype)
    model = keras.Model(inputs, dense(gap(backbone(inputs))), name="convnext_classifier")
    return models.TestModel(model, models._chain(*trunk), models._chain(*rest, gap, models._affine(dense)), "convnext.down3_norm")


def build(seed=5):
    """The float32 classifier with LayerNorm scales and shifts as training leaves them (an
    initial LayerNorm's outputs sum to zero over channels, which leaves EigenCAM's sign to
    rounding) and its float64 twin. Seed 5 cancels: in verification's sample one image's
    counterfactual XGrad-CAM divides by a channel's sum over positions that nearly
    vanishes, and its float32 map is off by 2.9e-2 where it reaches 23 (1.2e-3 of the
    batch's largest map: refused when judged against that), 2.9e-7 of the 1.0e5 its terms
    reach."""
    keras.utils.set_random_seed(seed)
    model32 = convnext()
    rng = np.random.default_rng(seed)
    for layer in model32.model.get_layer("convnext").layers:
        if isinstance(layer, layers.LayerNormalization):
            layer.gamma.assign(rng.normal(1.0, 0.3, layer.gamma.shape))
            layer.beta.assign(rng.normal(0.0, 0.3, layer.beta.shape))
    model64 = convnext("float64")
    model64.model.set_weights([np.asarray(w, np.float64) for w in model32.model.get_weights()])
    return model32, model64


def run(explain, images, class_index, method):
    out = explain(images=images, class_index=np.asarray(class_index, np.int32), method=np.asarray(method, np.int32))
    return {k: v.numpy() for k, v in out.items()}


@pytest.fixture(scope="module")
def convnext_export(tmp_path_factory):
    """(version folder, export progress, float32 and float64 test models)."""
    model32, model64 = build()
    folder = tmp_path_factory.mktemp("convnext")
    model32.model.save(folder / "convnext.keras")
    progress = io.StringIO()
    options = exporter.ExportOptions(str(folder / "convnext.keras"), str(folder / "repo"), "convnext", preprocess="scale")
    return exporter.export(options, Steps(6, progress)), progress.getvalue(), model32, model64


def test_a_convnext_under_a_new_head_is_verified_and_published(convnext_export):
    path, progress, model32, _ = convnext_export
    assert path.name == "1" and (path / "saved_model.pb").exists()
    assert f"target layer {model32.target}," in progress
    line = next(line for line in progress.splitlines() if "max error:" in line)
    assert "of their terms' scale (largest: " in line, line


def float64_gradcam(test_model, pixels, class_index: int, counterfactual: bool):
    """Grad-CAM by its formula on the float64 model split at the target by its explicit
    chain: the tape's gradient of the logit (negated for a counterfactual), weights its
    spatial mean. Returns the map before scaling and the magnitude of its terms,
    max over positions of sum_k |w_k A_k|."""
    activations = test_model.features(tf.constant(pixels[None] / 255.0))
    with tf.GradientTape() as tape:
        tape.watch(activations)
        score = test_model.logits(activations)[0, class_index]
    a = activations.numpy()[0]
    g = tape.gradient(score, activations).numpy()[0] * (-1.0 if counterfactual else 1.0)
    terms = a * g.mean(axis=(0, 1))
    return np.maximum(terms.sum(axis=-1), 0.0), np.abs(terms).sum(axis=-1).max()


def test_its_gradcam_equals_an_independent_float64_gradcam_within_the_terms_scale(convnext_export):
    path, _, _, model64 = convnext_export
    images = reference.smooth_images(4, models.SIZE, seed=7)
    cases = [(i, c, counterfactual) for i in range(4) for c in range(models.CLASSES) for counterfactual in (False, True)]
    explain = tf.saved_model.load(str(path)).signatures["serving_default"]
    out = run(explain, images[[i for i, _, _ in cases]], [c for _, c, _ in cases], [COUNTERFACTUAL * cf for _, _, cf in cases])
    got = out["heatmap"] * out["heatmap_scale"][:, None, None]
    of_terms, of_map = [], []
    for k, (i, c, counterfactual) in enumerate(cases):
        want, terms = float64_gradcam(model64, images[i], c, counterfactual)
        of_terms.append(np.abs(got[k] - want).max() / terms)
        of_map.append(np.abs(got[k] - want).max() / want.max() if want.max() > 0 else 0.0)
    assert max(of_terms) < 1e-6, f"rounding, far inside the tolerance: {max(of_terms):.1e}"
    # The maps cancel: against their own maximum the same differences are far larger.
    assert max(of_map) > 30 * max(of_terms)


def varied_inputs(num_layers: int):
    """Four images a method, plain and counterfactual, of the top two, the first and the
    last class and, with several layers, of each layer and fusion."""
    count = 4 * len(NAMES)
    method = np.repeat(np.arange(len(NAMES)), 4) + COUNTERFACTUAL * (np.arange(count) % 2)
    if num_layers > 1:
        method = method + LAYER_CODE * (np.arange(count) % (num_layers + len(FUSIONS)))
    class_index = np.resize([-1, 0, -2, models.CLASSES - 1], count)
    return reference.smooth_images(count, models.SIZE, seed=11), class_index.astype(np.int32), method.astype(np.int32)


@pytest.fixture(scope="module")
def judged(convnext_export, exports):
    """name -> (SavedModel signature, inputs, float64 reference, its scales, targets): the
    ConvNeXt export, and the functional test model exported with a second, finer layer."""
    path, _, convnext32, _ = convnext_export
    functional_path, _, functional32, _ = exports.get("functional", key="functional_layers", more_layers=["conv1"])
    found = {}
    for name, folder, model, targets in (
        ("convnext", path, convnext32.model, [("convnext", "down3_norm")]),
        ("functional_layers", functional_path, functional32.model, [("block_out",), ("conv1",)]),
    ):
        inputs = varied_inputs(len(targets))
        want, scales = verify.reference(model, targets, "scale", 3, inputs)
        found[name] = (tf.saved_model.load(str(folder)).signatures["serving_default"], inputs, want, scales, targets)
    return found


def wrong_maps(how: str, explain, inputs, want, num_layers: int):
    """The export's maps for `inputs` as a wrong export would give them: of the next class,
    on the negated gradient, or of the next layer choice (layer, ..., mean, max)."""
    images, class_index, method = inputs
    if how == "class":
        class_index = (want["class_index"] + 1) % models.CLASSES
    elif how == "sign":
        method = method ^ COUNTERFACTUAL
    else:
        layer, code = np.divmod(method, LAYER_CODE)
        method = code + LAYER_CODE * ((layer + 1) % (num_layers + len(FUSIONS)))
    return run(explain, images, class_index, method)


# Wrong answers that are the right ones by design: Eigen-CAM uses no gradient, and
# EigenGrad-CAM's sign is set by the activations, so a negated gradient leaves it as it is.
WRONGS = [
    ("convnext", "class", {"eigencam"}),
    ("convnext", "sign", {"eigencam", "eigengradcam"}),
    ("functional_layers", "class", {"eigencam"}),
    ("functional_layers", "sign", {"eigencam", "eigengradcam"}),
    ("functional_layers", "layer", set()),
]


@pytest.mark.parametrize("name, how, unchanged", WRONGS, ids=[f"{name}-{how}" for name, how, _ in WRONGS])
def test_a_wrong_map_is_refused_naming_its_method(judged, name, how, unchanged):
    """Each method in turn answers with wrong maps (every other answer right): the check
    fails and says which map and by how much, unless the wrong maps are the right ones."""
    explain, inputs, want, scales, targets = judged[name]
    method = inputs[2]
    right = run(explain, *inputs)
    assert verify.compare(right, want, scales, method, targets).ok
    wrong = wrong_maps(how, explain, inputs, want, len(targets))
    empty = set()
    for code, method_name in enumerate(NAMES):
        rows = method % COUNTERFACTUAL == code
        got = {**right, "heatmap": np.where(rows[:, None, None], wrong["heatmap"], right["heatmap"])}
        got["heatmap_scale"] = np.where(rows, wrong["heatmap_scale"], right["heatmap_scale"])
        report = verify.compare(got, want, scales, method, targets)
        if not (right["heatmap"][rows].any() or wrong["heatmap"][rows].any()):
            empty.add(method_name)
        if method_name in unchanged | empty:
            np.testing.assert_allclose(got["heatmap"], right["heatmap"], atol=1e-5, err_msg=method_name)
            assert report.ok, report
            continue
        assert not report.ok, (method_name, str(report))
        summary = f"logits {report.logits_error:.2e} relative, heatmaps {report.heatmap_error:.2e} of their terms' scale"
        assert str(report).startswith(f"{summary} (largest: {method_name}"), str(report)
    # On the ConvNeXt's LayerNorm target Grad-CAM++'s weights are nearly all positive while
    # the activations they weigh sum below zero almost everywhere: most of its maps are
    # empty, and a wrong empty map is the right one.
    assert empty <= {"gradcam++"}


def test_an_export_whose_maps_explain_another_class_is_not_published(tmp_path, monkeypatch):
    """Through the exporter: a module whose maps are of the next class (its outputs still
    naming the class asked for) fails verification, naming a map and its error."""

    class NextClass(Explainer):
        def explain(self, images, class_index, method):
            right = super().explain(images, class_index, method)
            wrong = super().explain(images, (right["class_index"] + 1) % models.CLASSES, method)
            return {**right, "heatmap": wrong["heatmap"], "heatmap_scale": wrong["heatmap_scale"]}

    monkeypatch.setattr(exporter, "Explainer", NextClass)
    models.build("functional")[0].model.save(tmp_path / "functional.keras")
    options = exporter.ExportOptions(str(tmp_path / "functional.keras"), str(tmp_path / "repo"), "wrong", preprocess="scale", xla=False)
    with pytest.raises(verify.VerificationError) as raised:
        exporter.export(options, Steps(6, io.StringIO()))
    message = str(raised.value)
    assert message.startswith("the exported model disagrees with the float64 reference: logits "), message
    found = re.search(r"heatmaps (\S+) of their terms' scale \(largest: ([a-z+-]+)", message)
    assert found and float(found[1]) > 1e-2 and found[2] in NAMES, message
    assert message.endswith("(tolerance 1e-04); nothing was published")
    assert not any((tmp_path / "repo" / "wrong").iterdir())
