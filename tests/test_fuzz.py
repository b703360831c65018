"""Property-based fuzzing of the wire: whatever a caller sends, natively or over
KServe, the answer is a status from the documented set and the server stays
healthy."""

import http.client
import json
import urllib.parse

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


def assert_documented(rpc, request, documented=DOCUMENTED):
    try:
        rpc(request, timeout=20)
    except grpc.RpcError as err:
        assert err.code() in documented, f"{err.code()}: {err.details()}"
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
        model_version=draw(st.sampled_from(["", "1", "2", "x", "-1", "²", "１", "99999999999999999999999"])),
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
@given(name=names, version=st.integers(-(2**63), 2**63 - 1), text_version=st.sampled_from(["", "1", "abc", "-1", "99", "1.5", "²", "１", "99999999999999999999999", "9" * 5000]))
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


# -- HTTP ----------------------------------------------------------------------

HTTP_DOCUMENTED = {200, 400, 401, 404, 405, 408, 413, 429, 503, 504}
HTTP_FUZZ = settings(FUZZ, max_examples=80)
# Strings that have broken servers: empty, a lone surrogate (JSON can escape one), digits
# isdigit() takes and int() refuses or reads, NUL, a number past int64.
ODD_TEXT = ["", "\udcff", "\ud800", "²", "１", "\x00", "9" * 30, "tiny", "images", "UINT8", "BYTES"]
KEYS = ["inputs", "outputs", "parameters", "id", "name", "shape", "datatype", "data", "binary_data_size", "binary_data",
        "binary_data_output", "classification", "timeout", "sequence_id"]
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8) | st.sampled_from(ODD_TEXT)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def either(draw, strategy):
    """Mostly a value of the expected kind, sometimes any JSON value."""
    return draw(json_values) if draw(st.integers(0, 4)) == 0 else draw(strategy)


@st.composite
def image_input(draw, binary: list[bytes]):
    """A well-formed `images` tensor, as JSON data or binary."""
    n = draw(st.integers(1, 2))
    tensor = {"name": "images", "datatype": "UINT8", "shape": [n, models.SIZE, models.SIZE, 3]}
    if draw(st.booleans()):
        tensor["data"] = [7] * (n * models.SIZE * models.SIZE * 3)
    else:
        binary.append(bytes(n * models.SIZE * models.SIZE * 3))
        tensor["parameters"] = {"binary_data_size": len(binary[-1])}
    return tensor


@st.composite
def rest_inputs(draw, binary: list[bytes]):
    """One input tensor as KServe REST JSON; a binary one appends its bytes to `binary`."""
    name = either(draw, st.sampled_from(["images", "images", "image_bytes", "class_index", "method", "counterfactual", "layer", "other"]))
    tensor = {
        "name": name,
        "datatype": either(draw, st.sampled_from(DATATYPES)),
        "shape": either(draw, st.lists(st.integers(-2, 40) | st.sampled_from([0, 2**31, 2**40, 2**64, 10**30]), max_size=5)),
    }
    kind = draw(st.sampled_from(["image", "data", "binary", "binary", "none"]))
    if kind == "image":
        tensor = draw(image_input(binary))
    elif kind == "data":
        tensor["data"] = either(draw, st.lists(st.integers(-300, 300) | st.floats() | st.text(max_size=3), max_size=30))
    elif kind == "binary":
        blob = draw(st.binary(max_size=300))
        binary.append(blob)
        tensor["parameters"] = either(draw, st.fixed_dictionaries({"binary_data_size": st.sampled_from([len(blob)]) | st.integers(-1, 400)}))
    if draw(st.integers(0, 5)) == 0:
        tensor["parameters"] = draw(json_values)
    return tensor


@st.composite
def rest_outputs(draw):
    output = {"name": either(draw, st.sampled_from(["logits", "probabilities", "class_index", "heatmap", "heatmap_scale", "nope", ""]))}
    if draw(st.booleans()):
        output["parameters"] = either(draw, st.fixed_dictionaries({}, optional={"binary_data": st.booleans(), "classification": st.integers(0, 3)}))
    return output


@st.composite
def kserve_rest_bodies(draw):
    """(body, headers) of a KServe REST infer call: the protocol's structure with any
    part of the wrong kind now and then, binary tensors (Triton's extension) with right
    or wrong sizes and header lengths, or no structure at all."""
    shape = draw(st.sampled_from(["well formed", "well formed", "structured", "structured", "any JSON", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=200)), {}
    if shape == "any JSON":
        return json.dumps(draw(json_values)).encode(), {}
    binary = []
    if shape == "well formed":  # what a client sends, options drawn: the deeper paths run
        document = {"inputs": [draw(image_input(binary))]}
        n = document["inputs"][0]["shape"][0]
        for name, values in (("class_index", st.integers(-6, 6)), ("method", st.integers(-1, 10)), ("layer", st.integers(-1, 3))):
            if draw(st.booleans()):
                document["inputs"].append({"name": name, "datatype": "INT32", "shape": [n], "data": draw(st.lists(values, min_size=n, max_size=n))})
        names = st.sampled_from(["logits", "probabilities", "class_index", "heatmap", "heatmap_scale"])
        outputs = draw(st.lists(st.fixed_dictionaries({"name": names}, optional={"parameters": st.fixed_dictionaries({"binary_data": st.booleans()})}), max_size=3))
        document["outputs"] = outputs
        document["parameters"] = draw(st.fixed_dictionaries({}, optional={"binary_data_output": st.booleans(), "timeout": st.integers(0, 10**8)}))
        document["id"] = draw(st.text(max_size=6))
        header = json.dumps(document).encode()
        return header + b"".join(binary), {"Inference-Header-Content-Length": str(len(header)).encode()} if binary else {}
    document = {"inputs": either(draw, st.lists(rest_inputs(binary), max_size=3))}
    if draw(st.booleans()):
        document["outputs"] = either(draw, st.lists(rest_outputs(), max_size=3))
    if draw(st.booleans()):
        document["parameters"] = either(draw, st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_scalars, max_size=3))
    if draw(st.booleans()):
        document["id"] = either(draw, st.text(max_size=6) | st.sampled_from(ODD_TEXT))
    header = json.dumps(document).encode()
    tail = b"".join(binary) + draw(st.sampled_from([b"", b"", b"extra"]))
    if not tail and draw(st.booleans()):
        return header, {}
    length = draw(st.sampled_from([str(len(header))] * 3 + ["", "-1", "²", "１", "99999999999999999999999", str(len(header) + len(tail) + 1)]) | st.integers(0, len(header) + len(tail)).map(str))
    return header + tail, {"Inference-Header-Content-Length": length.encode()}


def http_call(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def assert_http_documented(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    status, answer = http_call(server, method, path, body, headers)
    assert status in HTTP_DOCUMENTED, f"{status} for {method} {path}: {answer[:300]!r}"
    if status >= 400:
        assert json.loads(answer)["error"], "every refusal says why"


@HTTP_FUZZ
@given(request=kserve_rest_bodies(), version=st.sampled_from(["", "", "/versions/1", "/versions/2", "/versions/%C2%B2"]))
def test_kserve_rest_infer_gets_documented_statuses(server, request, version):
    body, headers = request
    assert_http_documented(server, "POST", f"/v2/models/tiny{version}/infer", body, headers)


# rest_explain's options (not imported: its KServe stubs and tritonclient's share a proto package), and unknown ones.
OPTION_NAMES = [
    "method", "class_index", "layer", "counterfactual", "top_k", "resize", "background", "timeout_ms", "heatmap", "size", "format",
    "opacity", "colormap", "box", "colour", "", "x",
]
OPTION_VALUES = [
    "", "0", "1", "-1", "-6", "2", "nan", "inf", "-0", "1e999", "99999999999999999999", "²", "１", "\x00", "yes", "no",
    "gradcam", "gradcam++", "png", "uint8", "float16", "none", "original", "feature", "overlay", "json", "letterbox",
    "center_crop", "jet", "viridis", "FF0000", "0x00ff00", "block_out", "mean", "max",
]

GOOD_OPTIONS = {
    "method": ["gradcam", "gradcam++", "layercam"], "class_index": ["0", "-1", "4"], "layer": ["block_out"], "counterfactual": ["yes", "no"],
    "top_k": ["1", "5"], "resize": ["stretch", "center_crop", "letterbox"], "background": ["FF0000"], "timeout_ms": ["0", "1", "60000"],
    "heatmap": ["png", "uint8", "float16", "none"], "size": ["original", "feature"], "format": ["json", "overlay"],
    "opacity": ["0", "0.5", "nan"], "colormap": ["jet", "viridis"], "box": ["0", "0.3"],
}


@st.composite
def uploads(draw):
    """(query string, body, headers) of an explain upload: options from the known
    names and odd values, the image raw, in a well-formed multipart form (file or
    text fields, any names) or mislabelled."""
    if draw(st.booleans()):  # each option's name with one of its own values
        pairs = list(draw(st.dictionaries(st.sampled_from(sorted(GOOD_OPTIONS)), st.none(), max_size=4)))
        pairs = [(name, draw(st.sampled_from(GOOD_OPTIONS[name]))) for name in pairs]
    else:
        pairs = draw(st.lists(st.tuples(st.sampled_from(OPTION_NAMES), st.sampled_from(OPTION_VALUES) | st.text(max_size=6)), max_size=4))
    query = urllib.parse.urlencode(pairs, quote_via=urllib.parse.quote)
    image = draw(images_bytes() | st.binary(max_size=100) | st.just(b""))
    kind = draw(st.sampled_from(["raw", "raw", "multipart", "urlencoded", "text"]))
    if kind == "multipart":
        parts = []
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.text(max_size=6).map(urllib.parse.quote))
            if draw(st.booleans()):
                filename = draw(st.text(max_size=6).map(urllib.parse.quote))
                head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: image/png'
                data = image
            else:
                head = f'Content-Disposition: form-data; name="{name}"'
                data = draw(st.text(max_size=10)).encode()
            parts.append(b"--B\r\n" + head.encode() + b"\r\n\r\n" + data + b"\r\n")
        return query, b"".join(parts) + b"--B--\r\n", {"Content-Type": "multipart/form-data; boundary=B"}
    content_type = {"raw": "application/octet-stream", "urlencoded": "application/x-www-form-urlencoded", "text": "text/plain; charset=nope"}[kind]
    return query, image, {"Content-Type": content_type}


@HTTP_FUZZ
@given(upload=uploads(), version=st.sampled_from(["", "", "/versions/1", "/versions/9", "/versions/%EF%BC%91"]))
def test_explain_uploads_get_documented_statuses(server, upload, version):
    query, body, headers = upload
    assert_http_documented(server, "POST", f"/camserve/models/tiny{version}/explain?{query}", body, headers)


ROUTES = [
    ("GET", "/v2/models/{model}"), ("GET", "/v2/models/{model}/ready"), ("GET", "/v2/models/{model}/config"),
    ("GET", "/v2/models/{model}/stats"), ("POST", "/v2/models/{model}/infer"), ("POST", "/camserve/models/{model}/explain"),
]
ROUTES += [(method, path.replace("{model}", "{model}/versions/{version}")) for method, path in ROUTES]
# Percent-encodings of any text, ones that are no UTF-8 (an encoded surrogate, an overlong
# slash), of a slash or NUL, broken ones, and numbers far past int64.
segments = (
    st.text(max_size=10).map(lambda text: urllib.parse.quote(text, safe=""))
    | st.sampled_from(["tiny", "1", "0", "-1", "%FF", "%ED%B3%BF", "%C0%AF", "%2F", "%00", "%", "%zz", "%C2%B2", "%EF%BC%91", "..", "9" * 300])
    | st.integers(-(2**70), 2**70).map(str)
)
versions = st.sampled_from(["1", "0", "-1", "%C2%B2", "%EF%BC%91", "99999999999999999999999", "9" * 5000]) | segments


@HTTP_FUZZ
@given(route=st.sampled_from(ROUTES), model=segments, version=versions, method=st.sampled_from(["route's", "route's", "GET", "POST", "DELETE"]))
def test_every_http_path_parameter_gets_documented_statuses(server, route, model, version, method):
    verb, template = route
    verb = verb if method == "route's" else method
    one_image = json.dumps({"inputs": [{"name": "images", "shape": [1, 1, 1, 3], "datatype": "UINT8", "data": [0, 0, 0]}]}).encode()
    body = (one_image if "infer" in template else _encoded(np.zeros((4, 4, 3), np.uint8), ".png")) if verb == "POST" else None
    assert_http_documented(server, verb, template.format(model=model, version=version), body)


def test_http_is_healthy_after_fuzzing(server):
    assert http_call(server, "GET", "/v2/health/ready")[0] == 200
    body = json.dumps({"inputs": [{"name": "images", "shape": [1, models.SIZE, models.SIZE, 3], "datatype": "UINT8",
                                   "data": [7] * (models.SIZE * models.SIZE * 3)}]}).encode()
    status, answer = http_call(server, "POST", "/v2/models/tiny/infer", body)
    assert status == 200 and json.loads(answer)["model_name"] == "tiny"


# -- TF Serving's gRPC services and REST routes ----------------------------------
# Its own status for an unknown signature is FAILED_PRECONDITION (predict_util.cc).
TFS_DOCUMENTED = DOCUMENTED | {grpc.StatusCode.FAILED_PRECONDITION}
TFS_ALIASES = ["images", "image_bytes", "class_index", "method", "counterfactual", "layer", "pixels", ""]


@st.composite
def tfserving_requests(draw):
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    if draw(st.integers(0, 9)):  # now and then no model_spec at all
        spec = request.model_spec
        spec.name = draw(st.sampled_from(["tiny", "tiny", "tiny", "nope", "", "tiny\x00"]))
        spec.signature_name = draw(st.sampled_from(["", "", "serving_default", "explain", "predict", "nope", "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace")]))
        choice = draw(st.sampled_from(["none", "none", "version", "label"]))
        if choice == "version":
            spec.version.value = draw(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([1, 2, 0]))
        elif choice == "label":
            spec.version_label = draw(st.sampled_from(["stable", "canary", "", "1"]))
    dtypes = [types_pb2.DT_UINT8, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_STRING,
              types_pb2.DT_BOOL, types_pb2.DT_HALF, types_pb2.DT_INVALID, 999]
    for _ in range(draw(st.integers(0, 4))):
        tensor = request.inputs[draw(st.sampled_from(TFS_ALIASES))]
        tensor.dtype = draw(st.sampled_from(dtypes))
        for size in draw(st.lists(st.integers(-2, 40) | st.sampled_from([2**31, 2**40]), max_size=5)):
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
        kind = draw(st.sampled_from(["content", "int", "float", "string", "none"]))
        if kind == "content":
            tensor.tensor_content = draw(st.binary(max_size=4000))
        elif kind == "int":
            tensor.int_val.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=20)))
        elif kind == "float":
            tensor.float_val.extend(draw(st.lists(st.floats(width=32), max_size=20)))
        elif kind == "string":
            tensor.string_val.extend(draw(st.lists(images_bytes() | st.binary(max_size=30), max_size=3)))
    if draw(st.booleans()):  # a well-formed image batch, so deeper paths run too
        n = draw(st.integers(1, 3))
        tensor = request.inputs["images"]
        tensor.dtype = types_pb2.DT_UINT8
        for size in (n, models.SIZE, models.SIZE, 3):
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_content = bytes(n * models.SIZE * models.SIZE * 3)
    request.output_filter.extend(draw(st.lists(st.sampled_from(["logits", "heatmap", "class_index", "nope", ""]), max_size=3)))
    return request


@HTTP_FUZZ
@given(request=tfserving_requests())
def test_tfserving_predict_requests_get_documented_statuses(channel, request):
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    assert_documented(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict, request, TFS_DOCUMENTED)


@FEW
@given(request=tfserving_requests(), fields=st.lists(st.sampled_from(["signature_def", "signature_def", "nope", ""]), max_size=2))
def test_tfserving_metadata_and_status_get_documented_statuses(channel, request, fields):
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, prediction_service_pb2_grpc

    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    status = get_model_status_pb2.GetModelStatusRequest()
    if request.HasField("model_spec"):
        metadata.model_spec.CopyFrom(request.model_spec)
        status.model_spec.CopyFrom(request.model_spec)
    assert_documented(prediction_service_pb2_grpc.PredictionServiceStub(channel).GetModelMetadata, metadata, TFS_DOCUMENTED)
    assert_documented(model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus, status, TFS_DOCUMENTED)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.sampled_from(ODD_TEXT) | st.builds(lambda t: {"b64": t}, st.sampled_from(["AAAA", "!!", "", "iVBORw0KGgo="])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(TFS_ALIASES), inner, max_size=3),
    max_leaves=12,
)


@st.composite
def tfserving_rest_bodies(draw):
    """TF Serving REST predict bodies: row or columnar, odd values, a well-formed batch
    now and then; or not JSON at all."""
    kind = draw(st.sampled_from(["instances", "inputs", "both", "neither", "raw", "good"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    document = {}
    if draw(st.booleans()):
        document["signature_name"] = draw(st.sampled_from(["", "predict", "explain", "serving_default", "nope", 3]))
    if kind == "good":
        image = np.full((models.SIZE, models.SIZE, 3), 7, np.uint8).tolist()
        document["instances"] = [image] * draw(st.integers(1, 2))
    if kind in ("instances", "both"):
        document["instances"] = draw(json_values)
    if kind in ("inputs", "both"):
        document["inputs"] = draw(json_values)
    return json.dumps(document).encode()


@FEW
@given(body=tfserving_rest_bodies(), where=st.sampled_from(["", "", "/versions/1", "/versions/2", "/labels/stable", "/versions/%C2%B2"]),
       verb=st.sampled_from([":predict", ":predict", ":explain"]))
def test_tfserving_rest_predict_gets_documented_statuses(server, body, where, verb):
    assert_http_documented(server, "POST", f"/v1/models/tiny{where}{verb}", body, {"Content-Type": "application/json"})


TFS_ROUTES = [
    ("GET", "/v1/models/{model}"), ("GET", "/v1/models/{model}/metadata"), ("POST", "/v1/models/{model}:predict"),
    ("POST", "/v1/models/{model}:explain"), ("GET", "/v1/models/{model}/versions/{version}"),
    ("GET", "/v1/models/{model}/labels/{version}/metadata"), ("POST", "/v1/models/{model}/versions/{version}:predict"),
]


@FEW
@given(route=st.sampled_from(TFS_ROUTES), model=segments, version=versions, method=st.sampled_from(["route's", "route's", "GET", "POST", "DELETE"]))
def test_every_tfserving_path_parameter_gets_documented_statuses(server, route, model, version, method):
    verb, template = route
    verb = verb if method == "route's" else method
    body = json.dumps({"instances": [np.zeros((models.SIZE, models.SIZE, 3), np.uint8).tolist()]}).encode() if verb == "POST" else None
    assert_http_documented(server, verb, template.format(model=model, version=version), body)


def test_server_answers_tfserving_after_fuzzing(server):
    body = json.dumps({"signature_name": "predict", "instances": [np.full((models.SIZE, models.SIZE, 3), 7, np.uint8).tolist()]}).encode()
    status, answer = http_call(server, "POST", "/v1/models/tiny:predict", body)
    assert status == 200 and len(json.loads(answer)["predictions"]) == 1
