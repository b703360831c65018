"""The real server on loopback, called over gRPC."""

import asyncio
import threading

import cv2
import grpc
import numpy as np
import pytest
import tensorflow as tf

from camserve.client import AsyncClient, Client, messages
from camserve.export.methods import CAM_NAMES as METHOD_NAMES
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc
from tests import models, reference
from tests.waiting import settle

SIZE = models.SIZE


@pytest.fixture(scope="module")
def in_process(server_repo):
    return tf.saved_model.load(str(server_repo / "tiny" / "1")).signatures["serving_default"]


@pytest.fixture(scope="module")
def client(server):
    with Client(server.target, model="tiny") as c:
        yield c


def local(explain, images, class_index=-1, method=0):
    n = len(images)
    out = explain(
        images=np.asarray(images, np.uint8),
        class_index=np.full(n, class_index, np.int32),
        method=np.full(n, method, np.int32),
    )
    return {k: v.numpy() for k, v in out.items()}


def png(image) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def assert_same(result, want, i=0):
    np.testing.assert_allclose(result.heatmap, want["heatmap"][i], atol=1e-6)
    assert result.class_index == want["class_index"][i]
    np.testing.assert_allclose(result.probabilities, want["probabilities"][i], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result.logits, want["logits"][i], rtol=1e-5, atol=1e-6)
    assert result.heatmap_scale == pytest.approx(float(want["heatmap_scale"][i]), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("kind", ["encoded", "raw"])
def test_server_equals_in_process_savedmodel(client, in_process, kind):
    images = reference.smooth_images(3, SIZE, seed=20)
    for i, image in enumerate(images):
        for method, name in enumerate(METHOD_NAMES):
            class_index = (None, 3, 0)[(i + method) % 3]
            sent = png(image) if kind == "encoded" else image
            result = client.explain(sent, class_index=class_index, method=name, return_scores=True)
            want = local(in_process, image[None], -1 if class_index is None else class_index, method)
            assert_same(result, want)
            assert result.method == name


def test_larger_images_are_resized_like_opencv_area(client, in_process):
    big = cv2.resize(reference.smooth_images(1, SIZE, seed=21)[0], (97, 75), interpolation=cv2.INTER_CUBIC)
    result = client.explain(png(big), return_scores=True)
    assert_same(result, local(in_process, cv2.resize(big, (SIZE, SIZE), interpolation=cv2.INTER_AREA)[None]))
    assert result.image_size == (75, 97)


def test_gray_and_alpha_images(client, in_process):
    rgb = reference.smooth_images(1, SIZE, seed=22)[0]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    want_gray = local(in_process, np.repeat(gray[None, :, :, None], 3, axis=3))
    assert_same(client.explain(cv2.imencode(".png", gray)[1].tobytes(), return_scores=True), want_gray)
    assert_same(client.explain(gray, return_scores=True), want_gray)
    rgba = np.dstack([rgb, np.full((SIZE, SIZE), 255, np.uint8)])
    assert_same(client.explain(rgba, return_scores=True), local(in_process, rgb[None]))


def test_top_k_labels_and_heatmap_formats(client, in_process):
    image = reference.smooth_images(1, SIZE, seed=23)[0]
    want = local(in_process, image[None])
    result = client.explain(image, top_k=3, heatmap_type="uint8")
    order = np.argsort(-want["probabilities"][0])[:3]
    assert [p.index for p in result.top_k] == list(order)
    np.testing.assert_allclose(result.heatmap, np.round(want["heatmap"][0] * 255) / 255, atol=1e-6)
    full = client.explain(image, original_size=True)
    assert full.heatmap.shape == (SIZE, SIZE)
    np.testing.assert_allclose(full.heatmap, client.explain(image).heatmap_at(SIZE, SIZE), atol=1e-6)


@pytest.mark.parametrize("resize", ["center_crop", "letterbox"])
def test_resize_modes_map_back_to_the_original_geometry(client, in_process, resize):
    """A wide image: center-crop explains its middle square, letterbox all of it
    padded; at original size the map covers exactly the region that was seen."""
    wide = cv2.resize(reference.smooth_images(1, SIZE, seed=24)[0], (2 * SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    result = client.explain(wide, resize=resize, original_size=True)
    assert result.heatmap.shape == (SIZE, 2 * SIZE)
    if resize == "center_crop":
        want = local(in_process, wide[None, :, SIZE // 2 : SIZE // 2 + SIZE])
        middle = result.heatmap[:, SIZE // 2 : SIZE // 2 + SIZE]
        np.testing.assert_allclose(middle, cv2.resize(want["heatmap"][0], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR), atol=1e-5)
        assert not result.heatmap[:, : SIZE // 2 - 1].any() and not result.heatmap[:, SIZE // 2 + SIZE + 1 :].any()
    else:
        canvas = np.full((SIZE, SIZE, 3), 114, np.uint8)
        canvas[SIZE // 4 : SIZE // 4 + SIZE // 2] = cv2.resize(wide, (SIZE, SIZE // 2), interpolation=cv2.INTER_AREA)
        want = local(in_process, canvas[None])
        feature = client.explain(wide, resize=resize)
        np.testing.assert_allclose(feature.heatmap, want["heatmap"][0], atol=1e-6)
        assert (feature.region.y0, feature.region.y1) == (-SIZE / 2, SIZE + SIZE / 2)


def test_concurrent_callers_are_batched_and_each_gets_its_own_result(server, client):
    images = reference.smooth_images(16, SIZE, seed=25)
    alone = [client.explain(image, class_index=i % models.CLASSES, method=("gradcam", "guided")[i % 2]) for i, image in enumerate(images)]
    batches_before = server.metric("camserve_batch_size_count", model="tiny")
    barrier = threading.Barrier(16)
    results = [None] * 16

    def call(i):
        with Client(server.target, model="tiny") as own:
            barrier.wait()
            for _ in range(3):  # several rounds, so batches form even on a slow start
                results[i] = own.explain(images[i], class_index=i % models.CLASSES, method=("gradcam", "guided")[i % 2])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(r.batch_size for r in results) > 1
    for got, want in zip(results, alone):
        np.testing.assert_allclose(got.heatmap, want.heatmap, rtol=1e-5, atol=1e-6)
        assert got.class_index == want.class_index
    batches = server.metric("camserve_batch_size_count", model="tiny") - batches_before
    assert batches < 48, "the metrics should show fewer batches than requests"


def test_stream_returns_every_result_tagged_and_early(client):
    """The last image is sent only once a result has come back (or after 60 s, when none
    streams back before the stream ends), rather than 10 ms after the one before it."""
    images = reference.smooth_images(50, SIZE, seed=26)
    sent_last, received = threading.Event(), threading.Event()
    received_before_last = []

    def held_back(images):
        for i, image in enumerate(images):
            if i == len(images) - 1:
                received.wait(60)
                sent_last.set()
            yield image

    results = []
    for result in client.explain_stream(held_back(images)):
        received_before_last.append(not sent_last.is_set())
        received.set()
        results.append(result)
    assert sorted(r.index for r in results) == list(range(50))
    assert all(r.error is None for r in results)
    assert any(received_before_last), "results should stream back while requests are still being sent"
    by_index = {r.index: r for r in results}
    np.testing.assert_allclose(by_index[7].heatmap, client.explain(images[7]).heatmap, atol=1e-6)


def test_async_client(server):
    images = reference.smooth_images(4, SIZE, seed=27)

    async def main():
        async with AsyncClient(server.target, model="tiny") as c:
            singles = await asyncio.gather(*(c.explain(image) for image in images))
            streamed = [r async for r in c.explain_stream(images)]
            return singles, streamed, await c.list_models()

    singles, streamed, listed = asyncio.run(main())
    assert [m.name for m in listed] == ["tiny"]
    for r in streamed:
        np.testing.assert_allclose(r.heatmap, singles[r.index].heatmap, atol=1e-6)


def _png_claiming(width: int, height: int) -> bytes:
    """A real PNG's bytes with its IHDR size rewritten: a tiny file claiming a huge image."""
    data = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    return bytes(data)


BOMB_PNG = _png_claiming(50000, 50000)
CORRUPT_PNG = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()[:40] + b"\0" * 20

BAD = {
    "unknown format": (dict(image=pb.Image(encoded=b"GIF89a not supported")), grpc.StatusCode.INVALID_ARGUMENT, "not a JPEG, PNG, BMP or WebP"),
    "truncated header": (dict(image=pb.Image(encoded=b"\x89PNG\r\n\x1a\n\0\0")), grpc.StatusCode.INVALID_ARGUMENT, "PNG header (10 bytes) is truncated"),
    "corrupt body": (dict(image=pb.Image(encoded=CORRUPT_PNG)), grpc.StatusCode.INVALID_ARGUMENT, "could not be decoded"),
    "decompression bomb": (dict(image=pb.Image(encoded=BOMB_PNG)), grpc.StatusCode.INVALID_ARGUMENT, "50000x50000 = 2500000000 pixels"),
    "empty image": (dict(image=pb.Image()), grpc.StatusCode.INVALID_ARGUMENT, "image is empty"),
    "wrong byte count": (
        dict(image=pb.Image(raw=pb.RawImage(pixels=b"\0" * 10, height=4, width=4, channels=3))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "has 10 bytes; 4x4x3 needs 48",
    ),
    "zero size": (dict(image=pb.Image(raw=pb.RawImage(pixels=b"", height=0, width=4, channels=3))), grpc.StatusCode.INVALID_ARGUMENT, "at least 1 pixel"),
    "huge size": (
        dict(image=pb.Image(raw=pb.RawImage(pixels=b"\0", height=100000, width=100000, channels=3))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the limit is",
    ),
    "five channels": (dict(image=pb.Image(raw=pb.RawImage(pixels=b"\0" * 20, height=2, width=2, channels=5))), grpc.StatusCode.INVALID_ARGUMENT, "expected 1, 2, 3 or 4"),
    "unknown model": (dict(model="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' is not served here"),
    "unknown version": (dict(version=9), grpc.StatusCode.NOT_FOUND, "version 9 is not loaded"),
    "class out of range": (dict(class_index=models.CLASSES), grpc.StatusCode.INVALID_ARGUMENT, "class_index out of range for 5 classes (-1..-5: the highest class, the next, ...): [5]"),
    "rank past the classes": (dict(class_index=-6), grpc.StatusCode.INVALID_ARGUMENT, "class_index out of range for 5 classes (-1..-5: the highest class, the next, ...): [-6]"),
    "unknown method": (dict(method="lime"), grpc.StatusCode.INVALID_ARGUMENT, "unknown method 'lime'"),
    "attention method on a CNN": (
        dict(method="attention-rollout"), grpc.StatusCode.INVALID_ARGUMENT, "tiny does not offer 'attention-rollout': the model has no keras MultiHeadAttention; tiny offers gradcam,"
    ),
}


def test_bad_inputs_get_clear_statuses_while_good_ones_succeed(server, in_process):
    good_image = reference.smooth_images(1, SIZE, seed=28)[0]
    want = local(in_process, good_image[None])
    good = pb.ExplainRequest(model="tiny", image=pb.Image(raw=pb.RawImage(pixels=good_image.tobytes(), height=SIZE, width=SIZE, channels=3)))

    async def main():
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.CamServeStub(channel)

            async def bad(fields):
                request = pb.ExplainRequest()
                request.CopyFrom(good)
                for key, value in fields.items():
                    if key == "image":
                        request.image.CopyFrom(value)
                    else:
                        setattr(request, key, value)
                try:
                    await stub.Explain(request, timeout=30)
                except grpc.aio.AioRpcError as err:
                    return err.code(), err.details()
                return grpc.StatusCode.OK, ""

            return await asyncio.gather(
                *(bad(fields) for fields, _, _ in BAD.values()), *(stub.Explain(good, timeout=30) for _ in range(16))
            )

    outcomes = asyncio.run(main())
    for (name, (_, code, message)), (got_code, details) in zip(BAD.items(), outcomes):
        assert got_code == code, f"{name}: {got_code} {details}"
        assert message in details, f"{name}: {details}"
    for response in outcomes[len(BAD) :]:
        values = np.frombuffer(response.heatmap.data, "<f4").reshape(response.heatmap.height, response.heatmap.width)
        np.testing.assert_allclose(values, want["heatmap"][0], atol=1e-6)
    assert server.health() == "SERVING"


def test_stream_errors_do_not_break_the_stream(client):
    image = reference.smooth_images(1, SIZE, seed=29)[0]
    results = list(client.explain_stream([image, b"junk", image, image], method="gradcam"))
    errors = {r.index: r.error for r in results if r.error}
    assert list(errors) == [1] and errors[1][0] == "INVALID_ARGUMENT" and "not a JPEG" in errors[1][1]
    assert len(results) == 4


def test_model_metadata_and_reflection(client, server):
    info = client.get_model("tiny")
    assert (info.input_height, info.input_width, info.num_classes) == (SIZE, SIZE, models.CLASSES)
    assert list(info.methods) == list(METHOD_NAMES) and info.device.endswith("CPU:0")
    assert list(info.batch_sizes) == [1, 2, 4, 8] and info.state == "AVAILABLE" and info.head == "softmax"
    with pytest.raises(grpc.RpcError) as err:
        client.get_model("nope")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(client.channels[0])
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {s.name for r in responses for s in r.list_services_response.service}
    assert {"camserve.v1.CamServe", "grpc.health.v1.Health"} <= services


def test_explain_many_answers_in_order_with_in_band_errors(server, client, in_process):
    images = reference.smooth_images(11, SIZE, seed=60)
    sent = [*images[:4], b"junk", *images[4:]]
    results = client.explain_many(sent, per_call=4, calls=2, return_scores=True)
    assert [r.index for r in results] == list(range(12))
    assert results[4].error[0] == "INVALID_ARGUMENT" and all(r.error is None for i, r in enumerate(results) if i != 4)
    want = local(in_process, images)
    for i, result in enumerate(r for r in results if r.error is None):
        assert_same(result, want, i)
    assert max(r.batch_size for r in results if r.error is None) > 1, "a call's images share batches"

    async def many():
        async with AsyncClient(server.target, model="tiny") as c:
            return await c.explain_many(images, per_call=5)

    assert [r.class_index for r in asyncio.run(many())] == list(want["class_index"])
    with pytest.raises(grpc.RpcError) as err:
        client.explain_many(images, per_call=9)  # the server's window is 8
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "1 to 8 requests" in err.value.details()


def test_explain_many_at_the_model_size_travels_as_blocks(server, client, in_process):
    """ExplainMany's raw images at the model's size that ask the same travel as one
    block: two blocks here (two classes asked), which share a batch with a request
    of another size (fitted on its own); every request is counted, and each answer
    is its own image's, as the SavedModel gives it."""
    images = reference.smooth_images(7, SIZE, seed=61)
    larger = reference.smooth_images(1, 2 * SIZE, seed=62)[0]
    # An earlier test's calls must have ended and been counted (a failed explain_many's cancels land late).
    assert settle(server) == 0
    before = server.metric("camserve_requests_total", api="native_many", code="OK")
    with Client(server.target, model="tiny") as each:
        sent = [messages.request_message(image, messages.request_options(model="tiny", return_scores=True), str(i)) for i, image in enumerate(images[:4])]
        sent += [messages.request_message(image, messages.request_options(model="tiny", class_index=1, return_scores=True), str(i + 4)) for i, image in enumerate(images[4:])]
        sent.append(messages.request_message(larger, messages.request_options(model="tiny", return_scores=True), "7"))
        answers = each.stub.ExplainMany(pb.ExplainManyRequest(requests=sent), timeout=30).responses
    assert [a.id for a in answers] == [str(i) for i in range(8)] and all(a.error.code == 0 for a in answers)
    assert {a.timing.batch_size for a in answers} == {8}, "the two blocks and the fitted image share one batch"
    assert server.metric("camserve_requests_total", api="native_many", code="OK") - before == 8
    top, second = local(in_process, images[:4]), local(in_process, images[4:], class_index=1)
    for i, answer in enumerate(answers[:7]):
        assert_same(messages.explanation(answer), *((top, i) if i < 4 else (second, i - 4)))
    assert answers[7].image_width == 2 * SIZE and answers[7].explained.index == int(np.argmax(answers[7].logits))


# Which class a map explains: top_k_maps, classes by rank, counterfactual maps.
COUNTERFACTUAL = 256  # camserve.json's counterfactual_code


def local_one(explain, image, class_index, code):
    return {k: v[0] for k, v in local(explain, image[None], class_index, code).items()}


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
    code = METHOD_NAMES.index(method) + (COUNTERFACTUAL if counterfactual else 0)
    ranked = np.argsort(-result.logits, kind="stable")
    assert [m.class_index for m in result.maps] == list(ranked[:3])
    assert result.class_index == ranked[0] and np.array_equal(result.heatmap, result.maps[0].heatmap)
    for rank, found in enumerate(result.maps, start=1):
        want = local_one(in_process, image, -rank, code)
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
        want = local_one(in_process, image, -2, COUNTERFACTUAL)
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


# Maps at several target layers: one export, a layer or a fusion per request.
LAYER_CODE = 512  # camserve.json's layer_code


@pytest.fixture(scope="module")
def layered(exports, tmp_path_factory):
    """The functional test model exported with block_out (the default) and conv1."""
    import shutil

    from camserve.server.ops.process import serving

    path, saved, *_ = exports.get("functional", key="functional_layers", more_layers=["conv1"])
    repo = tmp_path_factory.mktemp("layered") / "repo"
    shutil.copytree(path, repo / "layered" / "1")
    with serving(repo, tmp_path_factory.mktemp("logs") / "server.log", "--max-batch-size", "8") as process:
        with Client(process.target, model="layered") as c:
            yield c, saved.signatures["serving_default"]


def test_a_request_picks_a_layer_or_a_fusion(layered, client):
    layered_client, explain = layered
    info = layered_client.get_model("layered")
    assert list(info.layers) == ["block_out", "conv1"] and list(info.fusions) == ["mean", "max"]
    assert (info.feature_height, info.feature_width) == (SIZE, SIZE), "maps come at the finest layer's size"
    image = reference.smooth_images(1, SIZE, seed=64)[0]
    for code, layer in enumerate([None, "conv1", "mean", "max"]):
        result = layered_client.explain(image, method="layercam", layer=layer, class_index=-2)
        want = local_one(explain, image, -2, METHOD_NAMES.index("layercam") + LAYER_CODE * code)
        assert result.class_index == want["class_index"]
        np.testing.assert_allclose(result.heatmap, want["heatmap"], atol=1e-6)
    with pytest.raises(grpc.RpcError) as err:
        layered_client.explain(image, layer="conv9")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "block_out, conv1, mean, max" in err.value.details()
    assert client.explain(image, layer="block_out").heatmap is not None, "a one-layer model takes its own layer's name"
    with pytest.raises(grpc.RpcError) as err:
        client.explain(image, layer="mean")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "offers block_out" in err.value.details()
