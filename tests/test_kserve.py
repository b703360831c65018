"""The KServe v2 protocol, driven by Triton's own client (tritonclient), which
nobody here wrote. This process never imports camserve's KServe stubs: they
share the `inference` proto package with tritonclient's."""

import queue

import cv2
import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests import models, reference

SIZE = models.SIZE
OUTPUTS = ("logits", "probabilities", "class_index", "heatmap", "heatmap_scale")


@pytest.fixture(scope="module")
def kserve(server):
    client = triton.InferenceServerClient(url=server.target)
    yield client
    client.close()


def images_input(images):
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    return tensor


def int_input(name, values):
    tensor = triton.InferInput(name, [len(values)], "INT32")
    tensor.set_data_from_numpy(np.asarray(values, np.int32))
    return tensor


def png(image) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def test_liveness_readiness_and_metadata(kserve):
    assert kserve.is_server_live() and kserve.is_server_ready()
    assert kserve.is_model_ready("tiny") and not kserve.is_model_ready("nope")
    assert kserve.get_server_metadata().name == "camserve"
    meta = kserve.get_model_metadata("tiny")
    assert meta.versions == ["1"] and meta.platform == "tensorflow_savedmodel"
    assert {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}["images"] == ("UINT8", [-1, SIZE, SIZE, 3])
    outputs = {t.name: (t.datatype, list(t.shape)) for t in meta.outputs}
    assert outputs["heatmap"] == ("FP32", [-1, 16, 16]) and outputs["logits"] == ("FP32", [-1, models.CLASSES])
    config = kserve.get_model_config("tiny").config
    assert config.max_batch_size == 8 and list(config.dynamic_batching.preferred_batch_size) == [1, 2, 4, 8]
    assert config.parameters["head"].string_value == "softmax"
    assert config.parameters["target_layer"].string_value == "block_out"
    # Only `images` is advertised: perf_analyzer fills every advertised input with random data.
    assert [(i.name, list(i.dims)) for i in config.input] == [("images", [SIZE, SIZE, 3])]
    assert [t.name for t in meta.inputs] == ["images"]
    assert "class_index" in config.parameters["optional_inputs"].string_value


def test_infer_raw_and_encoded_equal_the_native_api(kserve, native):
    images = reference.smooth_images(3, SIZE, seed=40)
    class_index, method = [-1, 2, 0], [0, 1, 2]
    raw = kserve.infer("tiny", [images_input(images), int_input("class_index", class_index), int_input("method", method)])
    encoded = triton.InferInput("image_bytes", [3], "BYTES")
    encoded.set_data_from_numpy(np.array([png(i) for i in images], dtype=object))
    from_bytes = kserve.infer("tiny", [encoded, int_input("class_index", class_index), int_input("method", method)])
    for i, image in enumerate(images):
        want = native.explain(
            image, class_index=None if class_index[i] < 0 else class_index[i], method=("gradcam", "gradcam++", "guided")[i], return_scores=True
        )
        for result in (raw, from_bytes):
            np.testing.assert_allclose(result.as_numpy("heatmap")[i], want.heatmap, atol=1e-6)
            np.testing.assert_allclose(result.as_numpy("logits")[i], want.logits, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(result.as_numpy("probabilities")[i], want.probabilities, rtol=1e-5, atol=1e-7)
            assert result.as_numpy("class_index")[i] == want.class_index
            assert result.as_numpy("heatmap_scale")[i] == pytest.approx(want.heatmap_scale, rel=1e-5)


def test_blocks_larger_than_a_batch_are_split_and_each_row_is_its_own_image(server, native):
    """Images at the model's size travel as one block: two calls of 11 images at once,
    over batches of 8, are split and share batches, and every row answers its own
    image, as the native API explains it alone."""
    from concurrent.futures import ThreadPoolExecutor

    calls = []
    for seed in (48, 49):
        images = reference.smooth_images(11, SIZE, seed=seed)
        rng = np.random.default_rng(seed)
        calls.append((images, rng.integers(-3, models.CLASSES, 11).tolist(), rng.integers(0, 3, 11).tolist()))

    def infer(call):
        images, class_index, method = call
        with triton.InferenceServerClient(url=server.target) as client:
            return client.infer("tiny", [images_input(images), int_input("class_index", class_index), int_input("method", method)])

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(infer, calls))
    for (images, class_index, method), result in zip(calls, results):
        for i, image in enumerate(images):
            want = native.explain(image, class_index=class_index[i], method=("gradcam", "gradcam++", "guided")[method[i]], return_scores=True)
            assert result.as_numpy("class_index")[i] == want.class_index
            np.testing.assert_allclose(result.as_numpy("heatmap")[i], want.heatmap, atol=1e-6)
            np.testing.assert_allclose(result.as_numpy("probabilities")[i], want.probabilities, rtol=1e-5, atol=1e-7)


def test_per_image_scalars_may_come_as_n_by_1(kserve):
    """Triton's tools shape per-image scalars [N,1] (ModelConfig dims [1])."""
    images = reference.smooth_images(2, SIZE, seed=47)
    column = triton.InferInput("class_index", [2, 1], "INT32")
    column.set_data_from_numpy(np.array([[1], [4]], np.int32))
    result = kserve.infer("tiny", [images_input(images), column])
    assert list(result.as_numpy("class_index")) == [1, 4]


def test_requested_outputs_only(kserve):
    images = reference.smooth_images(2, SIZE, seed=41)
    result = kserve.infer("tiny", [images_input(images)], outputs=[triton.InferRequestedOutput("probabilities")])
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["probabilities"]
    assert result.as_numpy("probabilities").shape == (2, models.CLASSES)
    assert result.as_numpy("heatmap") is None


def test_ranked_classes_and_counterfactual_maps(kserve, native):
    images = reference.smooth_images(2, SIZE, seed=45)
    flags = triton.InferInput("counterfactual", [2], "BOOL")
    flags.set_data_from_numpy(np.array([True, False]))
    result = kserve.infer("tiny", [images_input(images), int_input("class_index", [-2, -3]), flags])
    for i, (rank, counterfactual) in enumerate(((-2, True), (-3, False))):
        want = native.explain(images[i], class_index=rank, counterfactual=counterfactual)
        assert result.as_numpy("class_index")[i] == want.class_index
        np.testing.assert_allclose(result.as_numpy("heatmap")[i], want.heatmap, atol=1e-6)


def test_outputs_without_a_heatmap_run_the_predict_signature(server, kserve, native):
    images = reference.smooth_images(3, SIZE, seed=44)
    before = server.metric("camserve_batches_total", model="tiny", signature="predict")
    wanted = [triton.InferRequestedOutput(name) for name in ("logits", "probabilities", "class_index")]
    result = kserve.infer("tiny", [images_input(images), int_input("class_index", [-1, 2, -1])], outputs=wanted)
    assert server.metric("camserve_batches_total", model="tiny", signature="predict") > before
    for i, image in enumerate(images):
        want = native.explain(image, class_index=2 if i == 1 else None, return_scores=True)
        np.testing.assert_allclose(result.as_numpy("probabilities")[i], want.probabilities, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(result.as_numpy("logits")[i], want.logits, rtol=1e-5, atol=1e-6)
        assert result.as_numpy("class_index")[i] == want.class_index


def test_typed_contents_are_accepted(server, kserve):
    images = reference.smooth_images(1, SIZE, seed=42)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.target))
    request = service_pb2.ModelInferRequest(model_name="tiny", id="typed")
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=list(images.shape))
    tensor.contents.uint_contents.extend(images.ravel().tolist())
    request.inputs.add(name="class_index", datatype="INT32", shape=[1]).contents.int_contents.append(3)
    response = stub.ModelInfer(request, timeout=30)
    assert response.id == "typed"
    names = [o.name for o in response.outputs]
    heatmap = np.frombuffer(response.raw_output_contents[names.index("heatmap")], "<f4").reshape(16, 16)
    want = kserve.infer("tiny", [images_input(images), int_input("class_index", [3])])
    np.testing.assert_allclose(heatmap, want.as_numpy("heatmap")[0], atol=1e-6)
    assert np.frombuffer(response.raw_output_contents[names.index("class_index")], "<i4")[0] == 3


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda imgs: [int_input("method", [0])], "send exactly one of"),
        (lambda imgs: [images_input(imgs), int_input("class_index", [models.CLASSES])], "class_index out of range"),
        (lambda imgs: [images_input(imgs), int_input("method", [99])], "method codes are 0.."),
        (lambda imgs: [images_input(imgs), int_input("layer", [1])], "layer codes are 0..0 (block_out)"),
        (lambda imgs: [images_input(imgs), int_input("class_index", [0, 1])], "expected [1], one per image"),
        (lambda imgs: [triton.InferInput("image_bytes", [1], "BYTES")], "has 0 elements; its shape says 1"),
        (lambda imgs: [images_input(imgs), int_input("zzz", [0])], "unknown input"),
    ],
)
def test_errors_are_invalid_argument(kserve, build, message):
    images = reference.smooth_images(1, SIZE, seed=43)
    with pytest.raises(InferenceServerException) as err:
        kserve.infer("tiny", build(images))
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and message in err.value.message()


def test_the_timeout_parameter_is_a_deadline(kserve):
    """tritonclient's infer(timeout=...) asks the server to give up after that many microseconds."""
    images = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    with pytest.raises(InferenceServerException) as err:
        kserve.infer("tiny", [images_input(images)], timeout=1)
    assert "DEADLINE_EXCEEDED" in err.value.status()
    assert kserve.infer("tiny", [images_input(images)], timeout=60_000_000).as_numpy("class_index").shape == (1,)


def test_unknown_model_and_output(kserve):
    images = reference.smooth_images(1, SIZE, seed=44)
    with pytest.raises(InferenceServerException) as err:
        kserve.infer("nope", [images_input(images)])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as err:
        kserve.infer("tiny", [images_input(images)], outputs=[triton.InferRequestedOutput("saliency")])
    assert "unknown output" in err.value.message()


def test_stream_infer_and_errors_in_band(server, native):
    images = reference.smooth_images(6, SIZE, seed=45)
    results = queue.Queue()
    client = triton.InferenceServerClient(url=server.target)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i, image in enumerate(images):
            inputs = [images_input(image[None])]
            if i == 3:
                inputs.append(int_input("class_index", [99]))
            client.async_stream_infer("tiny", inputs, request_id=str(i))
        got = [results.get(timeout=30) for _ in images]
    finally:
        client.stop_stream()
        client.close()
    errors = [error for _, error in got if error is not None]
    assert len(errors) == 1 and "class_index out of range" in str(errors[0])
    ok = {r.get_response().id: r for r, e in got if e is None}
    assert sorted(ok) == ["0", "1", "2", "4", "5"]
    np.testing.assert_allclose(ok["4"].as_numpy("heatmap")[0], native.explain(images[4]).heatmap, atol=1e-6)


def test_model_statistics_count_inferences_and_batches(kserve):
    before = kserve.get_inference_statistics("tiny").model_stats[0]
    kserve.infer("tiny", [images_input(reference.smooth_images(4, SIZE, seed=46))])
    after = kserve.get_inference_statistics("tiny").model_stats[0]
    assert after.inference_count - before.inference_count == 4
    assert 1 <= after.execution_count - before.execution_count <= 4
    assert after.inference_stats.success.count == before.inference_stats.success.count + 1
    assert after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns
    assert sum(b.compute_infer.count for b in after.batch_stats) == after.execution_count
    stats = after.inference_stats  # perf_analyzer insists the three compute counts agree
    assert stats.compute_input.count == stats.compute_infer.count == stats.compute_output.count
