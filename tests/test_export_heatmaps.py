"""Exported heatmaps against the independent float64 reference."""

import numpy as np
import pytest

from tests import models, reference

KINDS = ["functional", "sequential", "nested", "softmax_layer", "nested_backbone_target"]
# Heads as users write them, non-square and 1-channel inputs.
HEADS = ["tf_softmax", "ops_softmax", "softmax_cast", "sigmoid", "ops_sigmoid", "binary", "binary_layer", "relu_logits", "nested_sigmoid"]
SHAPES = ["wide", "tall", "gray"]


def run(saved, images, class_index, method):
    out = saved.signatures["serving_default"](
        images=images, class_index=np.asarray(class_index, np.int32), method=np.asarray(method, np.int32)
    )
    return {k: v.numpy() for k, v in out.items()}


def assert_matches_reference(got, i, want):
    np.testing.assert_allclose(got["logits"][i], want["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["probabilities"][i], want["probabilities"], rtol=1e-4, atol=1e-6)
    assert got["class_index"][i] == want["class_index"]
    np.testing.assert_allclose(got["heatmap"][i], want["heatmap"], atol=1e-4)
    np.testing.assert_allclose(got["heatmap_scale"][i], want["heatmap_scale"], rtol=1e-4, atol=1e-7)


def classes_to_explain(test_model):
    """Top-1, the first, the last and a middle class (binary: both, negative and positive)."""
    n = test_model.num_classes
    return [-1, 0, n - 1, n // 2]


@pytest.mark.parametrize("kind", KINDS + HEADS + SHAPES)
@pytest.mark.parametrize("method", range(len(reference.METHODS)), ids=reference.METHODS)
def test_heatmaps_equal_float64_reference(exports, kind, method):
    _, saved, model32, model64 = exports.get(kind)
    images = reference.smooth_images(4, model32.size, seed=10 + method)
    class_index = classes_to_explain(model32)
    got = run(saved, images, class_index, [method] * 4)
    wants = reference.explain_batch(model64, images, class_index, [reference.METHODS[method]] * 4)
    assert sum(w["heatmap_scale"] > 0 for w in wants) >= 2, "empty maps prove little: change the test images"
    for i, want in enumerate(wants):
        assert_matches_reference(got, i, want)


@pytest.mark.parametrize("kind", ["functional", "sequential", "nested_backbone_target", "wide", "gray"])
def test_a_batch_where_every_image_asks_for_another_method_equals_the_reference(exports, kind):
    """Only the methods a batch asks for are computed; each image still gets its own."""
    _, saved, model32, model64 = exports.get(kind)
    count = len(reference.METHODS)
    images = reference.smooth_images(count, model32.size, seed=30)
    classes = classes_to_explain(model32)
    class_index = [classes[i % len(classes)] for i in range(count)]
    got = run(saved, images, class_index, list(range(count)))
    for i, want in enumerate(reference.explain_batch(model64, images, class_index, reference.METHODS)):
        assert_matches_reference(got, i, want)


COUNTERFACTUAL = 256  # the code offset camserve.json records as counterfactual_code


@pytest.mark.parametrize("kind", ["functional", "sequential", "nested_backbone_target", "wide", "gray", "binary", "sigmoid"])
def test_ranked_classes_and_counterfactual_maps_equal_the_reference(exports, kind):
    """class_index -r is the r-th class by logit; a counterfactual map is the method
    on negated gradients (Grad-CAM paper, section 5); in one batch with plain maps."""
    _, saved, model32, model64 = exports.get(kind)
    n = model32.num_classes
    class_index = [-1, -2, -n, -1, -2, 0, n - 1, -1]
    names = ["gradcam", "gradcam", "hirescam", "gradcam", "layercam", "gradcam++", "xgradcam", "eigengradcam"]
    counterfactual = [False, False, False, True, True, True, False, True]
    codes = [reference.METHODS.index(m) + (COUNTERFACTUAL if c else 0) for m, c in zip(names, counterfactual)]
    images = reference.smooth_images(len(codes), model32.size, seed=31)
    got = run(saved, images, class_index, codes)
    wants = reference.explain_batch(model64, images, class_index, names, counterfactual=counterfactual)
    assert sum(w["heatmap_scale"] > 0 for w, c in zip(wants, counterfactual) if c) >= 2, "counterfactual maps exist"
    for i, want in enumerate(wants):
        assert_matches_reference(got, i, want)
    plain = run(saved, images[3:4], [-1], [0])
    assert not np.allclose(plain["heatmap"][0], got["heatmap"][3]), "a counterfactual map differs from the plain one"


LAYER_CODE = 512  # camserve.json's layer_code


@pytest.mark.parametrize("kind", ["functional", "wide", "gray"])
def test_a_batch_of_layers_and_fusions_equals_the_reference(exports, kind):
    """An export with two target layers (block_out 1/2 and conv1 at full resolution):
    per image either layer or their mean or max, with its own method and class, in
    one batch; every map at the finest layer's size."""
    _, saved, model32, model64 = exports.get(kind, key=f"{kind}_layers", more_layers=["conv1"])
    choices = [None, "conv1", "mean", "max"]
    layer_code = [0, 1, 2, 3]
    names = ["gradcam", "layercam", "gradcam++", "hirescam", "layercam", "gradcam", "eigencam", "xgradcam"]
    class_index = [-1, 0, -2, model32.num_classes - 1, -1, 2, -1, -2]
    counterfactual = [False, False, False, False, True, False, False, True]
    pick = [i % 4 for i in range(8)]
    codes = [
        reference.METHODS.index(m) + (COUNTERFACTUAL if c else 0) + LAYER_CODE * layer_code[k]
        for m, c, k in zip(names, counterfactual, pick)
    ]
    images = reference.smooth_images(8, model32.size, seed=33)
    got = run(saved, images, class_index, codes)
    assert got["heatmap"].shape[1:] == tuple(model32.size)
    wants = reference.explain_layers(model64, images, class_index, names, [None, "conv1"], [choices[k] for k in pick], counterfactual)
    for i, want in enumerate(wants):
        assert_matches_reference(got, i, want)
    for i in range(8):  # batch independence across layers and fusions too
        alone = run(saved, images[i : i + 1], class_index[i : i + 1], codes[i : i + 1])
        for name, value in alone.items():
            np.testing.assert_allclose(got[name][i], value[0], rtol=1e-5, atol=1e-6, err_msg=f"{name} of image {i}")
    single = run(saved, images[:2], [-1, -1], [0, LAYER_CODE])
    assert not np.allclose(single["heatmap"][0], single["heatmap"][1]), "the layers' maps differ"
    bad = run(saved, images[:2], [-1, -1], [4 * LAYER_CODE, -LAYER_CODE])
    assert list(bad["class_index"]) == [-1, -1] and not bad["heatmap"].any()


def test_out_of_range_ranks_and_codes_give_no_map(exports):
    _, saved, model32, _ = exports.get("functional")
    n = model32.num_classes
    images = reference.smooth_images(4, model32.size, seed=32)
    got = run(saved, images, [-n - 1, -1, -1, -1], [0, 2 * COUNTERFACTUAL, -COUNTERFACTUAL, COUNTERFACTUAL + len(reference.METHODS)])
    assert list(got["class_index"]) == [-1] * 4 and not got["heatmap"].any()


@pytest.mark.parametrize("kind", ["functional", "softmax_layer", "nested"] + HEADS + SHAPES)
def test_probabilities_equal_the_models_own_outputs(exports, kind):
    """The original Keras model (float32, not camserve's graph surgery) against the
    export, in the head's contract: softmax/sigmoid outputs are the probabilities,
    a binary model's p is the positive class's, a linear head's output the logits."""
    _, saved, model32, _ = exports.get(kind)
    images = reference.smooth_images(6, model32.size, seed=20)
    got = run(saved, images, [-1] * 6, [0] * 6)
    x = images.astype(np.float32) / 255.0
    if model32.channels == 1:
        x = (x @ reference.LUMINANCE.astype(np.float32))[..., None]
    own = model32.model(x, training=False).numpy()
    if model32.head == "binary":
        np.testing.assert_allclose(got["probabilities"], np.concatenate([1 - own, own], axis=1), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(got["class_index"], (own[:, 0] > 0.5).astype(np.int32))
    elif model32.head == "linear":
        np.testing.assert_allclose(got["logits"], own, rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_allclose(got["probabilities"], own, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(got["class_index"], own.argmax(axis=1))
    if model32.head == "sigmoid":
        assert not np.allclose(got["probabilities"].sum(axis=1), 1.0), "multi-label probabilities are per class"


def test_metadata_records_the_target_and_methods(exports):
    from camserve.export.repository import read_metadata

    for kind in KINDS:
        path, _, model32, _ = exports.get(kind)
        meta = read_metadata(path)
        assert meta["target_layer"] == model32.target
        assert meta["methods"] == list(reference.METHODS)
        assert meta["input_size"] == [models.SIZE, models.SIZE]
        assert meta["num_classes"] == models.CLASSES
        assert meta["head"] == "softmax"
    for kind in HEADS + SHAPES:
        path, _, model32, _ = exports.get(kind)
        meta = read_metadata(path)
        assert (meta["head"], meta["num_classes"]) == (model32.head, model32.num_classes)
        assert meta["input_size"] == list(model32.size) and meta["input_channels"] == model32.channels


def test_batch_independence(exports):
    """An image's outputs are the same alone and in a batch of 10 different images
    with different classes (ranks too) and methods per image (every method, one
    twice; three counterfactual)."""
    _, saved, _, _ = exports.get("nested")
    images = reference.smooth_images(10, models.SIZE, seed=3)
    class_index = [-1, 0, 1, -2, 3, 4, -3, 1, 2, -1]
    method = [m + (COUNTERFACTUAL if i in (1, 4, 9) else 0) for i, m in enumerate([*range(len(reference.METHODS)), 0])]
    batch = run(saved, images, class_index, method)
    for i in range(10):
        alone = run(saved, images[i : i + 1], class_index[i : i + 1], method[i : i + 1])
        for name, value in alone.items():
            np.testing.assert_allclose(batch[name][i], value[0], rtol=1e-5, atol=1e-6, err_msg=f"{name} of image {i}")


def test_confident_softmax_still_gives_a_map(exports):
    """Gradients through a saturated softmax vanish; ours come from the logits."""

    def sharpen(weights):
        weights = list(weights)
        weights[-2] = weights[-2] * 2000.0  # the final Dense kernel
        return weights

    _, saved, _, model64 = exports.get("functional", transform=sharpen, key="confident")
    images = reference.smooth_images(2, models.SIZE, seed=4)
    got = run(saved, images, [-1, -1], [0, 0])
    assert np.all(got["probabilities"].max(axis=1) == 1.0), "the model should be saturated for this test to mean anything"
    for i in range(2):
        assert got["heatmap"][i].max() == pytest.approx(1.0)
        assert_matches_reference(got, i, reference.explain_one(model64, images[i], -1, "gradcam"))


def test_empty_map_is_zeros_not_nan(exports):
    """All-negative class weights over ReLU activations make every map empty."""

    def negative(weights):
        weights = list(weights)
        weights[-2] = -np.abs(weights[-2])
        return weights

    _, saved, _, _ = exports.get("functional", transform=negative, key="negative")
    images = reference.smooth_images(3, models.SIZE, seed=5)
    got = run(saved, images, [1, 1, 1], [0, 1, 2])
    assert np.all(got["heatmap"] == 0.0) and not np.isnan(got["heatmap"]).any()
    assert np.all(got["heatmap_scale"] == 0.0)
    assert np.all(got["class_index"] == 1)


def test_gap_dense_gradcam_is_proportional_to_classic_cam(exports):
    """Zhou et al.'s CAM from the Dense weights: sum_k W[k,c] A_k."""
    _, saved, _, model64 = exports.get("functional")
    images = reference.smooth_images(3, models.SIZE, seed=6)
    got = run(saved, images, [0, 3, -1], [0, 0, 0])
    kernel = model64.model.get_layer("dense").kernel.numpy()
    for i in range(3):
        a = model64.features(images[i : i + 1].astype(np.float64) / 255.0).numpy()[0]
        cam = np.maximum(a @ kernel[:, got["class_index"][i]], 0.0)
        np.testing.assert_allclose(got["heatmap"][i], cam / cam.max(), atol=1e-4)


def test_invalid_class_or_method_is_flagged_not_guessed(exports):
    _, saved, _, _ = exports.get("functional")
    images = reference.smooth_images(4, models.SIZE, seed=7)
    got = run(saved, images, [models.CLASSES, -models.CLASSES - 1, 0, 0], [0, 0, len(reference.METHODS), -1])
    assert list(got["class_index"]) == [-1, -1, -1, -1]
    assert np.all(got["heatmap"] == 0.0)
    assert np.isfinite(got["logits"]).all()


@pytest.mark.parametrize("kind", ["functional", "sequential", "nested", "softmax_layer"])
def test_default_target_is_last_spatial_layer_through_nesting(kind):
    """Post-activation (block_out after the Add), inside a nested head, and never
    the 1x1 pooling after it."""
    from camserve.export.graph import default_target

    test_model = models.BUILDERS[kind]()
    assert ".".join(default_target(test_model.model)) == test_model.target


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
def test_eigen_cam_of_activations_near_float32_s_floor_is_the_same_map_scaled(method):
    """A deep network with random weights (keras.applications' MobileNet) ends in activations
    of 1e-19, whose squares float32 flushes to zero: the map must still be the float64 one."""
    import tensorflow as tf

    from camserve.export.methods import METHODS, NAMES

    rng = np.random.default_rng(3)
    a = rng.normal(0.5, 1, (2, 3, 4, 16))
    g = rng.normal(0, 1, a.shape)
    got = METHODS[NAMES.index(method)].map(tf.constant(a * 1e-19, tf.float32), tf.constant(g, tf.float32)).numpy()
    for i in range(2):
        want = reference.method_map(method, a[i] * 1e-19, g[i])
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-5 * want.max())


def test_the_top_eigenvector_stops_squaring_early_only_where_that_is_exact():
    """The squaring stops once every matrix of the batch is rank one: a batch mixing a
    well-separated spectrum, a near-degenerate one (ratio 0.998, which needs 14 of the
    16 squarings) and a zero matrix gets each one's float64 eigenvector (the zero's: zero)."""
    import tensorflow as tf

    from camserve.export.methods.eigencam import top_eigenvector

    rng = np.random.default_rng(5)
    grams, tops = [], []
    for ratio in (0.3, 0.998, 0.9):
        q, _ = np.linalg.qr(rng.standard_normal((64, 64)))
        eigenvalues = np.concatenate([[1.0, ratio], rng.uniform(0, 0.5 * ratio, 62)])
        grams.append((q * eigenvalues) @ q.T)
        tops.append(q[:, 0])
    grams.append(np.zeros((64, 64)))
    got = top_eigenvector(tf.constant(np.stack(grams), tf.float32)).numpy()
    for i, want in enumerate(tops):
        sign = np.sign(got[i] @ want)
        np.testing.assert_allclose(sign * got[i], want, atol=2e-6)
    assert not got[3].any()
    # The well-separated one alone settles early and is the same vector to rounding.
    alone = top_eigenvector(tf.constant(np.stack(grams[:1]), tf.float32)).numpy()[0]
    np.testing.assert_allclose(np.sign(alone @ tops[0]) * alone, tops[0], atol=2e-7)
