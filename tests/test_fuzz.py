"""Property-based fuzzing of the wire: whatever a caller sends, natively or over
KServe, the answer is a status from the documented set and the server stays
healthy."""

import cv2
import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc
from tests import models
from tests.test_images import tiff_orientation

DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE,
}
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _encoded(image: np.ndarray, ext: str) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


@st.composite
def images_bytes(draw):
    """Valid images of every accepted kind, then maybe broken: truncated,
    corrupted, or with a rewritten header."""
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    channels = draw(st.sampled_from([1, 3, 4]))
    depth = draw(st.sampled_from([np.uint8, np.uint16]))
    ext = draw(st.sampled_from([".png", ".jpg", ".bmp", ".webp"]))
    if ext in (".jpg", ".webp", ".bmp"):
        depth = np.uint8
    if ext == ".jpg" and channels == 4:
        channels = 3
    image = np.random.default_rng(draw(st.integers(0, 9))).integers(0, np.iinfo(depth).max, (h, w, channels), dtype=np.uint64).astype(depth)
    data = bytearray(_encoded(image, ext))
    damage = draw(st.sampled_from(["none", "truncate", "flip", "header", "garbage"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
    elif damage == "header":
        i = draw(st.integers(0, min(40, len(data) - 1)))
        data[i : i + 4] = draw(st.binary(min_size=4, max_size=4))
    elif damage == "garbage":
        data = bytearray(draw(st.binary(max_size=200)))
    return bytes(data)


@st.composite
def native_requests(draw):
    request = pb.ExplainRequest(
        id=draw(st.text(max_size=8)),
        model=draw(st.sampled_from(["tiny", "tiny", "", "other", "\x00"])),
        version=draw(st.sampled_from([0, 0, 1, 2, -1, 2**62])),
        method=draw(st.sampled_from(["", "gradcam", "gradcam++", "guided", "lime", "GRADCAM"])),
        top_k=draw(st.integers(0, 2**32 - 1)),
        heatmap_type=draw(st.integers(0, 5)),
        heatmap_original_size=draw(st.booleans()),
        resize=draw(st.integers(0, 5)),
        return_scores=draw(st.booleans()),
    )
    if draw(st.booleans()):
        request.class_index = draw(st.integers(-(2**31), 2**31 - 1) | st.integers(-2, models.CLASSES + 1))
    kind = draw(st.sampled_from(["encoded", "raw", "raw_matching", "none"]))
    if kind == "encoded":
        request.image.encoded = draw(images_bytes())
    elif kind == "raw":
        request.image.raw.CopyFrom(
            pb.RawImage(
                pixels=draw(st.binary(max_size=300)),
                height=draw(st.integers(0, 2**32 - 1) | st.integers(0, 20)),
                width=draw(st.integers(0, 2**32 - 1) | st.integers(0, 20)),
                channels=draw(st.integers(0, 8)),
            )
        )
    elif kind == "raw_matching":
        h, w, c = draw(st.integers(1, 50)), draw(st.integers(1, 50)), draw(st.sampled_from([1, 3, 4]))
        request.image.raw.CopyFrom(pb.RawImage(pixels=bytes(h * w * c), height=h, width=w, channels=c))
    return request


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.target) as channel:
        yield channel


def assert_documented(rpc, request):
    try:
        rpc(request, timeout=20)
    except grpc.RpcError as err:
        assert err.code() in DOCUMENTED, f"{err.code()}: {err.details()}"
        assert err.details(), "every refusal says why"


@FUZZ
@given(request=native_requests())
def test_native_requests_get_documented_statuses(channel, request):
    assert_documented(pb_grpc.CamServeStub(channel).Explain, request)


DATATYPES = ["UINT8", "INT32", "INT64", "FP32", "FP64", "BYTES", "BOOL", "FP16", "STRING", ""]


@st.composite
def kserve_requests(draw):
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from(["tiny", "tiny", "nope", ""])),
        model_version=draw(st.sampled_from(["", "1", "2", "x", "-1"])),
        id=draw(st.text(max_size=6)),
    )
    use_raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["images", "image_bytes", "class_index", "method", "other", "images"]))
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(st.lists(st.integers(-2, 40) | st.sampled_from([2**31, 2**40]), max_size=5))
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if name == "images" and datatype == "FP32" and draw(st.booleans()):
            values = np.full(max(1, min(int(np.prod([max(d, 0) for d in shape] or [1])), 4000)), np.nan, np.float32)
        else:
            values = None
        if use_raw:
            payload = values.tobytes() if values is not None else draw(st.binary(max_size=4000))
            request.raw_input_contents.append(payload)
        elif values is not None:
            tensor.contents.fp32_contents.extend(values.tolist())
        else:
            tensor.contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20)))
            tensor.contents.uint_contents.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=20)))
    if draw(st.booleans()):  # a well-formed image batch, so deeper paths run too
        n = draw(st.integers(1, 3))
        request.inputs.add(name="images", datatype="UINT8", shape=[n, models.SIZE, models.SIZE, 3])
        if use_raw:
            request.raw_input_contents.append(bytes(n * models.SIZE * models.SIZE * 3))
        else:
            request.inputs[-1].contents.uint_contents.extend([7] * (n * models.SIZE * models.SIZE * 3))
    for name in draw(st.lists(st.sampled_from(["logits", "heatmap", "nope", ""]), max_size=3)):
        request.outputs.add(name=name)
    return request


@FUZZ
@given(request=kserve_requests())
def test_kserve_requests_get_documented_statuses(channel, request):
    assert_documented(service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer, request)


names = st.sampled_from(["tiny", "", "nope", "tiny\x00", "../tiny"])
FEW = settings(FUZZ, max_examples=40)


@FEW
@given(name=names, version=st.integers(-(2**63), 2**63 - 1), text_version=st.sampled_from(["", "1", "abc", "-1", "99", "1.5"]))
def test_every_metadata_rpc_gets_documented_statuses(channel, name, version, text_version):
    native = pb_grpc.CamServeStub(channel)
    assert_documented(native.GetModel, pb.GetModelRequest(model=name, version=version))
    assert_documented(native.ListModels, pb.ListModelsRequest())
    kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    assert_documented(kserve.ModelReady, service_pb2.ModelReadyRequest(name=name, version=text_version))
    assert_documented(kserve.ModelMetadata, service_pb2.ModelMetadataRequest(name=name, version=text_version))
    assert_documented(kserve.ModelConfig, service_pb2.ModelConfigRequest(name=name, version=text_version))
    assert_documented(kserve.ModelStatistics, service_pb2.ModelStatisticsRequest(name=name, version=text_version))
    for rpc, request in (
        (kserve.ServerLive, service_pb2.ServerLiveRequest()),
        (kserve.ServerReady, service_pb2.ServerReadyRequest()),
        (kserve.ServerMetadata, service_pb2.ServerMetadataRequest()),
    ):
        assert_documented(rpc, request)


@FEW
@given(requests=st.lists(native_requests(), min_size=1, max_size=6))
def test_native_streams_answer_every_request_with_documented_statuses(channel, requests):
    responses = list(pb_grpc.CamServeStub(channel).ExplainStream(iter(requests), timeout=60))
    assert len(responses) == len(requests)
    codes = {grpc.StatusCode.OK if not r.HasField("error") else next(c for c in grpc.StatusCode if c.value[0] == r.error.code) for r in responses}
    assert codes <= DOCUMENTED, codes


@FEW
@given(requests=st.lists(kserve_requests(), min_size=1, max_size=4))
def test_kserve_streams_answer_every_request_with_documented_statuses(channel, requests):
    responses = list(service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(requests), timeout=60))
    assert len(responses) == len(requests)
    for r in responses:
        assert not r.error_message or r.error_message.split(":")[0] in {c.name for c in DOCUMENTED}, r.error_message


def test_server_is_healthy_after_fuzzing(server, channel):
    native_stub = pb_grpc.CamServeStub(channel)
    assert server.health() == "SERVING"
    image = pb.Image(raw=pb.RawImage(pixels=bytes(models.SIZE * models.SIZE * 3), height=models.SIZE, width=models.SIZE, channels=3))
    assert native_stub.Explain(pb.ExplainRequest(model="tiny", image=image), timeout=20).explained.index >= 0


@st.composite
def thin_images(draw):
    """(pb.Image, upright (height, width)): down to one pixel thick either way,
    raw with any channel count or encoded with an EXIF orientation."""
    thin, long = draw(st.integers(1, 4)), draw(st.integers(1, 3000))
    h, w = (thin, long) if draw(st.booleans()) else (long, thin)
    encoding = draw(st.sampled_from(["raw", ".png", ".jpg", ".webp"]))
    channels = draw(st.sampled_from({"raw": [1, 2, 3, 4], ".jpg": [1, 3]}.get(encoding, [1, 3, 4])))
    pixels = np.random.default_rng(draw(st.integers(0, 9))).integers(0, 256, (h, w, channels), dtype=np.uint8)
    if encoding == "raw":
        return pb.Image(raw=pb.RawImage(pixels=pixels.tobytes(), height=h, width=w, channels=channels)), (h, w)
    orientation = draw(st.integers(1, 8))
    exif = np.frombuffer(tiff_orientation(orientation, draw(st.booleans())), np.uint8)
    ok, data = cv2.imencodeWithMetadata(encoding, pixels, [cv2.IMAGE_METADATA_EXIF], [exif])
    assert ok
    return pb.Image(encoded=np.asarray(data).tobytes()), ((w, h) if orientation >= 5 else (h, w))


@pytest.fixture(scope="module")
def shaped_channel(shaped_server):
    with grpc.insecure_channel(shaped_server.target) as channel:
        yield channel


@FUZZ
@given(
    image=thin_images(),
    model=st.sampled_from(["wide", "tall"]),
    resize=st.sampled_from([pb.RESIZE_STRETCH, pb.RESIZE_CENTER_CROP, pb.RESIZE_LETTERBOX]),
    original_size=st.booleans(),
)
def test_extreme_aspect_ratios_on_non_square_models_are_answered(shaped_channel, image, model, resize, original_size):
    """Every valid image is answered under every resize mode, however far its
    shape is from the model's (48x96 or 96x48): never INTERNAL, never refused."""
    image, (height, width) = image
    request = pb.ExplainRequest(model=model, image=image, resize=resize, heatmap_original_size=original_size)
    response = pb_grpc.CamServeStub(shaped_channel).Explain(request, timeout=20)
    assert (response.image_height, response.image_width) == (height, width)
    region = response.heatmap.region
    assert region.x0 < region.x1 and region.y0 < region.y1
    if original_size:
        assert (response.heatmap.height, response.heatmap.width) == (height, width)
    elif resize == pb.RESIZE_CENTER_CROP:
        assert 0 <= region.x0 and 0 <= region.y0 and region.x1 <= width and region.y1 <= height
