"""Which class a map explains, over the wire: the top-k classes' maps in one call
(top_k_maps), classes by rank, and counterfactual maps, equal to the
SavedModel in-process; requests that cannot be met are refused clearly."""

import grpc
import numpy as np
import pytest
import tensorflow as tf

from camserve.client import Client
from camserve.export.methods import NAMES
from tests import models, reference

COUNTERFACTUAL = 256  # camserve.json's counterfactual_code


@pytest.fixture(scope="module")
def in_process(server_repo):
    return tf.saved_model.load(str(server_repo / "tiny" / "1")).signatures["serving_default"]


@pytest.fixture(scope="module")
def client(server):
    with Client(server.target, model="tiny") as c:
        yield c


def local(explain, image, class_index, code):
    out = explain(images=image[None], class_index=tf.constant([class_index], tf.int32), method=tf.constant([code], tf.int32))
    return {k: v.numpy()[0] for k, v in out.items()}


# Counterfactual Grad-CAM maps of the tiny test model are mostly empty (negated
# averaged gradients weigh its ReLU activations below zero), so the
# counterfactual cases use methods that keep per-position evidence.
@pytest.mark.parametrize(
    "method, counterfactual",
    [("gradcam", False), ("layercam", False), ("layercam", True), ("gradcam-elementwise", True)],
)
def test_top_k_maps_are_the_ranked_classes_maps(client, in_process, method, counterfactual):
    image = reference.smooth_images(1, models.SIZE, seed=60)[0]
    result = client.explain(image, top_k_maps=3, method=method, counterfactual=counterfactual, return_scores=True)
    code = NAMES.index(method) + (COUNTERFACTUAL if counterfactual else 0)
    ranked = np.argsort(-result.logits, kind="stable")
    assert [m.class_index for m in result.maps] == list(ranked[:3])
    assert result.class_index == ranked[0] and np.array_equal(result.heatmap, result.maps[0].heatmap)
    for rank, found in enumerate(result.maps, start=1):
        want = local(in_process, image, -rank, code)
        assert found.class_index == want["class_index"]
        assert found.probability == pytest.approx(float(want["probabilities"][found.class_index]), rel=1e-5)
        np.testing.assert_allclose(found.heatmap, want["heatmap"], atol=1e-6)
        assert found.heatmap_scale == pytest.approx(float(want["heatmap_scale"]), rel=1e-5, abs=1e-7)
    assert sum(m.heatmap_scale > 0 for m in result.maps) >= 2, "empty maps prove little: change the test image"
    assert not np.allclose(result.maps[0].heatmap, result.maps[1].heatmap)


def test_a_class_by_rank_and_a_counterfactual_map_in_a_stream(client, in_process):
    images = reference.smooth_images(3, models.SIZE, seed=61)
    results = sorted(client.explain_stream(list(images), class_index=-2, counterfactual=True), key=lambda r: r.index)
    for image, result in zip(images, results):
        want = local(in_process, image, -2, COUNTERFACTUAL)
        assert result.class_index == want["class_index"] and not result.maps
        np.testing.assert_allclose(result.heatmap, want["heatmap"], atol=1e-6)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(top_k_maps=2, class_index=1), "leave class_index unset"),
        (dict(top_k_maps=models.CLASSES + 1), "more than the model's"),
        (dict(top_k_maps=2, heatmap_type="none"), "predict-only"),
        (dict(counterfactual=True, heatmap_type="none"), "predict-only"),
        (dict(class_index=-models.CLASSES - 1), "class_index out of range"),
    ],
)
def test_targets_that_cannot_be_met_are_invalid_argument(client, options, message):
    image = reference.smooth_images(1, models.SIZE, seed=62)[0]
    with pytest.raises(grpc.RpcError) as err:
        client.explain(image, **options)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    assert client.explain(image).heatmap is not None, "the server is fine afterwards"
