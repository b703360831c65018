"""HTTP beside gRPC on a real server: KServe v2 REST driven by Triton's own
`tritonclient.http` (which nobody here wrote) and by raw requests, as curl would
send them; explain by upload. Answers are compared with the gRPC API's for the
same images."""

import base64
import http.client
import json
import select
import socket
import threading
import time
import urllib.parse

import cv2
import grpc
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from camserve.overlay import blend
from camserve.server.ops.process import serving
from tests import models

SIZE = models.SIZE
OUTPUTS = ["logits", "probabilities", "class_index", "heatmap", "heatmap_scale"]
RNG = np.random.default_rng(7)
IMAGES = RNG.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def rest(server):
    client = triton.InferenceServerClient(url=server.http.removeprefix("http://"))
    yield client
    client.close()


def call(server, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """One raw HTTP request: (status, headers, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def error_of(server, method, path, body=None, headers=None) -> tuple[int, str]:
    status, _, answer = call(server, method, path, body, headers)
    return status, json.loads(answer)["error"]


def images_input(images, binary=True):
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


def png(image) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


# -- tritonclient.http -------------------------------------------------------


def test_live_ready_metadata_and_config(rest):
    assert rest.is_server_live() and rest.is_server_ready()
    assert rest.is_model_ready("tiny") and rest.is_model_ready("tiny", "1")
    assert not rest.is_model_ready("nope") and not rest.is_model_ready("tiny", "7")
    assert rest.get_server_metadata()["name"] == "camserve"
    meta = rest.get_model_metadata("tiny")
    assert meta["versions"] == ["1"] and meta["platform"] == "tensorflow_savedmodel"
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, 3]}]
    assert [o["name"] for o in meta["outputs"]] == OUTPUTS
    config = rest.get_model_config("tiny")
    assert config["max_batch_size"] == 8 and config["input"][0]["dims"] == [SIZE, SIZE, 3]  # numbers, as perf_analyzer reads them
    assert "gradcam" in config["parameters"]["methods"]["string_value"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_the_grpc_api(rest, native, binary):
    result = rest.infer("tiny", [images_input(IMAGES, binary)], outputs=[triton.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS])
    for i, image in enumerate(IMAGES):
        expected = native.explain(image, return_scores=True)
        assert int(result.as_numpy("class_index")[i]) == expected.class_index
        np.testing.assert_allclose(result.as_numpy("probabilities")[i], expected.probabilities, atol=1e-6)
        np.testing.assert_allclose(result.as_numpy("heatmap")[i], expected.heatmap, atol=1e-5)
        assert result.as_numpy("heatmap_scale")[i] == pytest.approx(expected.heatmap_scale, rel=1e-5)


def test_encoded_images_and_per_image_options_in_json(rest, native):
    blobs = np.array([png(image) for image in IMAGES[:2]], dtype=object)
    encoded = triton.InferInput("image_bytes", [2], "BYTES")
    encoded.set_data_from_numpy(blobs, binary_data=True)
    classes = triton.InferInput("class_index", [2], "INT32")
    classes.set_data_from_numpy(np.array([1, 2], np.int32), binary_data=False)
    result = rest.infer("tiny", [encoded, classes], outputs=[triton.InferRequestedOutput("heatmap", binary_data=False)])
    for i, image in enumerate(IMAGES[:2]):
        np.testing.assert_allclose(result.as_numpy("heatmap")[i], native.explain(image, class_index=i + 1).heatmap, atol=1e-5)


def test_requested_outputs_only(rest):
    result = rest.infer("tiny", [images_input(IMAGES[:1])], outputs=[triton.InferRequestedOutput("class_index")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["class_index"]
    assert result.as_numpy("heatmap") is None


def test_unknown_model_is_404(rest):
    with pytest.raises(InferenceServerException) as err:
        rest.infer("nope", [images_input(IMAGES[:1])])
    assert err.value.status() == "404" and "not served" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        rest.get_model_metadata("nope")
    assert err.value.status() == "404"


def test_statistics_and_metrics_count_http_inferences(server, rest):
    before = rest.get_inference_statistics("tiny")["model_stats"][0]["inference_count"]
    rest.infer("tiny", [images_input(IMAGES)])
    after = rest.get_inference_statistics("tiny")["model_stats"][0]
    assert after["inference_count"] == before + len(IMAGES) and after["name"] == "tiny"
    status, headers, text = call(server, "GET", "/metrics")  # Prometheus on the HTTP port too
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    lines = [x for x in text.decode().splitlines() if x.startswith("camserve_requests_total") and 'api="kserve_http"' in x]
    assert sum(float(x.split()[-1]) for x in lines) == server.metric("camserve_requests_total", api="kserve_http") >= 1


# -- raw requests, as curl sends them ---------------------------------------


def infer_body(data: list, shape: list, datatype: str = "UINT8") -> bytes:
    return json.dumps({"inputs": [{"name": "images", "shape": shape, "datatype": datatype, "data": data}]}).encode()


def with_fields(tensor: dict | None = None, **fields) -> bytes:
    """A JSON infer request of one valid image, with `tensor` merged into its input
    and `fields` into the request."""
    image = {"name": "images", "shape": [1, SIZE, SIZE, 3], "datatype": "UINT8", "data": IMAGES[0].reshape(-1).tolist(), **(tensor or {})}
    return json.dumps({"inputs": [image], **fields}).encode()


def binary_body(images) -> tuple[bytes, dict]:
    """An infer request with `images` as a binary tensor, and its header."""
    header = json.dumps({"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8",
                                     "parameters": {"binary_data_size": images.nbytes}}]}).encode()
    return header + images.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def test_every_get_endpoint(server):
    for path in ("/v2", "/v2/models/tiny", "/v2/models/tiny/versions/1", "/v2/models/tiny/config", "/v2/models/tiny/stats", "/v2/models/stats"):
        status, headers, body = call(server, "GET", path)
        assert status == 200 and headers["Content-Type"].startswith("application/json"), path
        json.loads(body)
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/tiny/ready", "/v2/models/tiny/versions/1/ready"):
        assert call(server, "GET", path)[0] == 200, path
    assert error_of(server, "GET", "/v2/models/nope/ready")[0] == 404
    assert error_of(server, "GET", "/v2/models/tiny/versions/x/ready") == (400, "model_version 'x' is not a version number")
    assert error_of(server, "GET", "/v2/nothing/here")[0] == 404
    assert error_of(server, "DELETE", "/v2/models/tiny")[0] == 405


def test_json_infer_with_nested_data(server, native):
    status, _, body = call(server, "POST", "/v2/models/tiny/infer", infer_body(IMAGES[:1].tolist(), [1, SIZE, SIZE, 3]))
    assert status == 200
    answer = json.loads(body)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert answer["model_name"] == "tiny" and answer["model_version"] == "1" and list(outputs) == OUTPUTS
    assert outputs["heatmap"]["shape"] == [1, 16, 16] and outputs["heatmap"]["datatype"] == "FP32"
    np.testing.assert_allclose(np.reshape(outputs["heatmap"]["data"], (16, 16)), native.explain(IMAGES[0]).heatmap, atol=1e-5)


def test_the_timeout_parameter_is_a_deadline(server):
    """Triton's request parameter `timeout` (microseconds), as tritonclient's infer(timeout=...) sends it."""
    body = json.loads(infer_body(IMAGES[0].tolist(), [1, SIZE, SIZE, 3]))
    for timeout, status in ((1, 504), (60_000_000, 200)):
        body["parameters"] = {"timeout": timeout}
        assert call(server, "POST", "/v2/models/tiny/infer", json.dumps(body).encode())[0] == status
    body["parameters"] = {"timeout": "soon"}
    assert error_of(server, "POST", "/v2/models/tiny/infer", json.dumps(body).encode()) == (
        400, "parameter 'timeout' is a number of microseconds (int64, at least 0)")
    body["parameters"] = {"sequence_id": 7}
    assert error_of(server, "POST", "/v2/models/tiny/infer", json.dumps(body).encode())[0] == 400


def test_binary_request_and_response_by_hand(server, native):
    header = json.dumps({
        "id": "by-hand",
        "inputs": [{"name": "images", "shape": [1, SIZE, SIZE, 3], "datatype": "UINT8", "parameters": {"binary_data_size": IMAGES[0].nbytes}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "class_index"}],
    }).encode()
    status, headers, body = call(
        server, "POST", "/v2/models/tiny/versions/1/infer", header + IMAGES[0].tobytes(), {"Inference-Header-Content-Length": str(len(header))}
    )
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    length = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(body[:length])
    assert answer["id"] == "by-hand"
    probabilities, class_index = answer["outputs"]
    assert probabilities["parameters"]["binary_data_size"] == 4 * models.CLASSES and len(body) == length + 4 * models.CLASSES
    expected = native.explain(IMAGES[0], return_scores=True)
    np.testing.assert_allclose(np.frombuffer(body[length:], "<f4"), expected.probabilities, atol=1e-6)
    assert class_index["data"] == [expected.class_index]


@pytest.mark.parametrize(
    "body, headers, message",
    [
        (b'{"inputs": [', {}, "not valid JSON"),
        (b"[]", {}, '"inputs" list'),
        (infer_body([0] * 10, [1, SIZE, SIZE, 3]), {}, f"needs {SIZE * SIZE * 3}"),
        (infer_body([0] * (SIZE * SIZE), [1, SIZE, SIZE]), {}, "UINT8 [N,H,W,3]"),
        (infer_body([300] * 3, [1, 1, 1, 3]), {}, "UINT8 values run from 0 to 255"),
        (infer_body(["a"] * 3, [1, 1, 1, 3]), {}, "must be numbers"),
        (infer_body([[0, 0], [0]], [1, 1, 1, 3]), {}, "rectangular"),
        (infer_body([0] * 3, [1, 1, 1, 3], "FP16"), {}, "unsupported datatype"),
        (infer_body([0] * 3, "1,1,1,3"), {}, "shape must be a list of integers"),
        (b'{"inputs": [{"name": "images", "shape": [1], "datatype": "UINT8"}]}', {}, "neither data nor"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "999"}, "not a length within"),
        (b'{"inputs": []}extra', {"Inference-Header-Content-Length": "14"}, "binary bytes after"),
        (json.dumps({"inputs": json.loads(infer_body([0] * 3, [1, 1, 1, 3]))["inputs"], "outputs": [{"name": "nope"}]}).encode(), {}, "unknown output"),
        (json.dumps({"inputs": [], "outputs": [{"name": "logits", "parameters": {"classification": 2}}]}).encode(), {}, "classification extension"),
        (with_fields(parameters=[]), {}, '"parameters" must be an object, not list'),
        (with_fields(parameters="binary_data_output"), {}, '"parameters" must be an object, not str'),
        (with_fields(parameters={"binary_data_output": "yes"}), {}, '"binary_data_output" must be a boolean'),
        (with_fields(tensor={"parameters": []}), {}, """input 'images': "parameters" must be an object, not list"""),
        (with_fields(tensor={"parameters": "x"}), {}, """input 'images': "parameters" must be an object, not str"""),
        (with_fields(tensor={"parameters": {"binary_data_size": True}}), {}, "binary_data_size must be a number of bytes"),
        (with_fields(outputs=3), {}, '"outputs" must be a list, not int'),
        (with_fields(outputs="logits"), {}, '"outputs" must be a list, not str'),
        (with_fields(outputs=[{"name": "logits", "parameters": []}]), {}, """output 'logits': "parameters" must be an object, not list"""),
        (with_fields(outputs=[{"name": "logits", "parameters": "binary"}]), {}, """output 'logits': "parameters" must be an object"""),
        (with_fields(outputs=[{"name": "logits", "parameters": {"binary_data": "no"}}]), {}, """output 'logits': "binary_data" must be a boolean"""),
        (with_fields(id=5), {}, '"id" must be a string, not int'),
        (with_fields(id={"a": 1}), {}, '"id" must be a string, not dict'),
        (with_fields(id="\udcff"), {}, '"id" ' + "'\\udcff' is not valid Unicode"),
        (with_fields(tensor={"name": "\ud800"}), {}, "an input's name '\\ud800' is not valid Unicode"),
        (with_fields(parameters={"\udfff": 1}), {}, "a parameter's name '\\udfff' is not valid Unicode"),
        (infer_body(["\udcff"], [1], "BYTES"), {}, "BYTES data must be valid Unicode"),
        (infer_body([], [0, 10**30]), {}, "has shape [0, 1000000000000000000000000000000]"),
        (b'{"inputs": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}", {}, "nested too deeply"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "²".encode()}, "is not a length"),
    ],
    ids=["malformed", "not-an-object", "short-data", "wrong-shape", "out-of-range", "strings", "ragged", "datatype", "shape-type",
         "no-data", "header-length", "trailing-bytes", "unknown-output", "classification",
         "parameters-list", "parameters-string", "binary-output-flag", "input-parameters-list", "input-parameters-string",
         "binary-size-bool", "outputs-number", "outputs-string", "output-parameters-list", "output-parameters-string",
         "binary-data-flag", "id-number", "id-object", "id-surrogate", "name-surrogate", "parameter-surrogate", "bytes-surrogate",
         "huge-dimension", "deep-nesting", "header-length-superscript"],
)
def test_bad_infer_requests_are_400(server, body, headers, message):
    status, error = error_of(server, "POST", "/v2/models/tiny/infer", body, headers)
    assert status == 400 and message in error, error
    assert call(server, "GET", "/v2/health/ready")[0] == 200


def test_explain_by_upload_equals_the_grpc_api(server, native):
    image = RNG.integers(0, 256, (45, 70, 3), dtype=np.uint8)  # not the model's size, not square
    expected = native.explain(image, method="gradcam++", class_index=2, heatmap_type="uint8")
    status, _, body = call(server, "POST", "/camserve/models/tiny/explain?method=gradcam%2B%2B&class_index=2&heatmap=uint8", png(image))
    assert status == 200
    answer = json.loads(body)
    assert answer["method"] == "gradcam++" and answer["image"] == {"height": 45, "width": 70}
    assert answer["explained"]["index"] == 2 and [p["index"] for p in answer["top_k"]] == [p.index for p in expected.top_k]
    np.testing.assert_allclose([p["probability"] for p in answer["top_k"]], [p.probability for p in expected.top_k], atol=1e-6)
    heatmap = answer["heatmap"]
    assert (heatmap["encoding"], heatmap["height"], heatmap["width"]) == ("uint8", 16, 16)
    values = np.frombuffer(base64.b64decode(heatmap["data"]), np.uint8).reshape(16, 16) / 255
    np.testing.assert_allclose(values, expected.heatmap, atol=1.5 / 255)
    box = expected.box()
    assert answer["box"] == {"x0": box.x0, "y0": box.y0, "x1": box.x1, "y1": box.y1}


def test_overlay_png_and_multipart_upload(server, native):
    image = RNG.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    expected = native.explain(image)
    form = b"".join([
        b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n",
        png(image),
        b"\r\n--XyZ--\r\n",
    ])
    status, headers, body = call(
        server, "POST", "/camserve/models/tiny/versions/1/explain?format=overlay&opacity=0.6&box=0", form,
        {"Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    assert status == 200 and headers["Content-Type"] == "image/png"
    drawn = cv2.cvtColor(cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    reference = blend(image, expected.heatmap_at(30, 40), "jet", 0.6)
    assert np.abs(drawn.astype(int) - reference).max() <= 2


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/camserve/models/tiny/explain", b"not an image", 400, "is not a JPEG, PNG"),
        ("/camserve/models/tiny/explain", b"", 400, "no image"),
        ("/camserve/models/tiny/explain?method=nope", None, 400, "unknown method"),
        ("/camserve/models/tiny/explain?class_index=x", None, 400, "is not an integer"),
        ("/camserve/models/tiny/explain?opacity=2", None, 400, "outside 0.0..1.0"),
        ("/camserve/models/tiny/explain?opacity=nan", None, 400, "outside 0.0..1.0"),
        ("/camserve/models/tiny/explain?box=nan", None, 400, "outside 0.0..1.0"),
        ("/camserve/models/tiny/explain?colour=red", None, 400, "unknown query parameter"),
        ("/camserve/models/tiny/explain?heatmap=none&format=overlay", None, 400, "an overlay needs a heatmap"),
        ("/camserve/models/tiny/explain?colormap=nope", None, 400, "unknown OpenCV colormap"),
        ("/camserve/models/nope/explain", None, 404, "not served"),
        ("/camserve/models/tiny/versions/3/explain", None, 404, "version 3 is not loaded"),
    ],
)
def test_bad_uploads_get_their_status(server, path, body, status, message):
    body = png(IMAGES[0]) if body is None else body
    got, error = error_of(server, "POST", path, body)
    assert got == status and message in error, error


def test_list_models(server):
    status, _, body = call(server, "GET", "/camserve/models")
    (model,) = json.loads(body)["models"]
    assert status == 200 and model["name"] == "tiny" and model["input_height"] == SIZE and "gradcam" in model["methods"]


def raw_call(server, request: bytes) -> tuple[int, str, bytes]:
    """Bytes no HTTP client would send: (status, content type, body)."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as s:
        s.sendall(request)
        response = http.client.HTTPResponse(s)
        response.begin()
        return response.status, response.getheader("Content-Type", ""), response.read()


INFER = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    "request_bytes, is_json",
    [
        (b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Odd: a\x00b\r\n\r\n", False),
        (INFER + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\nzz\r\n", None),  # answered by whichever reads it first
        (INFER + b"Content-Encoding: gzip\r\nContent-Length: 10\r\n\r\nnot gzip!!", True),
        (b"POST /camserve/models/tiny/explain HTTP/1.1\r\nHost: x\r\nContent-Encoding: deflate\r\nContent-Length: 4\r\n\r\nnope", True),
    ],
    ids=["line-too-long", "nul-in-header", "bad-chunk", "bad-gzip", "bad-deflate"],
)
def test_requests_that_do_not_parse_are_400_and_log_nothing(server, request_bytes, is_json):
    """aiohttp's parser answers what it cannot parse itself, in plain text; a body that
    does not decode is ours to answer. Neither is logged: any caller could send them."""
    logged = len(server.log.read_text())
    status, kind, body = raw_call(server, request_bytes)
    assert status == 400 and is_json in (None, kind.startswith("application/json")), (status, kind, body)
    if kind.startswith("application/json"):
        assert "the request body cannot be read" in json.loads(body)["error"]
    assert call(server, "GET", "/v2/health/ready")[0] == 200
    assert '"level": "error"' not in server.log.read_text()[logged:]


def form(*parts: bytes) -> bytes:
    return b"".join(b"--B\r\n" + part + b"\r\n" for part in parts) + b"--B--\r\n"


PNG_PART = b'Content-Disposition: form-data; name="image"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n' + png(IMAGES[0])


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("multipart/form-data", form(PNG_PART)),
        ("multipart/form-data; boundary=B", b""),
        ("multipart/form-data; boundary=B", b"no boundary here"),
        ("multipart/form-data; boundary=B", form(b'Content-Disposition: form-data; filename="a.png"\r\n\r\nxx')),
        ("multipart/form-data; boundary=B", form(b'Content-Disposition: form-data; name="a"\r\nContent-Type: multipart/mixed; boundary=C\r\n\r\n--C--')),
        ("multipart/form-data; boundary=B", form(b'Content-Disposition: form-data; name="a"\r\nContent-Type: text/plain; charset=nope\r\n\r\nxx', PNG_PART)),
        ("multipart/form-data; boundary=B", form(b'Content-Disposition: form-data; name="a"\r\n\r\n\xff\xfe', PNG_PART)),
    ],
    ids=["no-boundary", "empty", "no-first-boundary", "no-name", "nested", "unknown-charset", "not-utf8"],
)
def test_malformed_multipart_forms_are_400(server, content_type, body):
    status, error = error_of(server, "POST", "/camserve/models/tiny/explain", body, {"Content-Type": content_type})
    assert status == 400, error


# Not plain ASCII numbers (str.isdigit() takes the first two; int() refuses "²" and 5,000
# digits), or past int64, where the native API's versions end.
BAD_VERSIONS = ["²", "１", "99999999999999999999999", "9" * 5000]


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=["superscript", "fullwidth", "past-int64", "5000-digits"])
def test_versions_that_are_not_version_numbers_are_400_over_http_and_invalid_over_grpc(server, version):
    logged = len(server.log.read_text())
    quoted = urllib.parse.quote(version)
    body, headers = binary_body(IMAGES[:1])
    for method, path, data in (
        ("GET", "", None), ("GET", "/ready", None), ("GET", "/config", None), ("GET", "/stats", None), ("POST", "/infer", body),
    ):
        status, error = error_of(server, method, f"/v2/models/tiny/versions/{quoted}{path}", data, headers)
        assert (status, error) == (400, f"model_version {version!r} is not a version number"), path
    status, error = error_of(server, "POST", f"/camserve/models/tiny/versions/{quoted}/explain", png(IMAGES[0]))
    assert (status, error) == (400, f"model_version {version!r} is not a version number")
    with grpc.insecure_channel(server.target) as channel:
        kserve = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        images = service_pb2.ModelInferRequest.InferInputTensor(name="images", datatype="UINT8", shape=[1, SIZE, SIZE, 3])
        request = service_pb2.ModelInferRequest(model_name="tiny", model_version=version, inputs=[images], raw_input_contents=[IMAGES[0].tobytes()])
        for rpc, message in ((kserve.ModelInfer, request), (kserve.ModelReady, service_pb2.ModelReadyRequest(name="tiny", version=version))):
            with pytest.raises(grpc.RpcError) as err:
                rpc(message, timeout=20)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "is not a version number" in err.value.details()
    assert "unexpected error" not in server.log.read_text()[logged:]


# -- limits ------------------------------------------------------------------


TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY_TIMEOUT = 3.0  # long enough to look at a full server before the stalled calls are cut


@pytest.fixture(scope="module")
def limited(server_repo, tmp_path_factory):
    """Small limits, a short body timeout and a bearer token."""
    folder = tmp_path_factory.mktemp("limited")
    (folder / "token").write_text(TOKEN)
    limits = ("--max-message-mb", "0.05", "--max-concurrent-rpcs", "2", "--http-body-timeout", str(BODY_TIMEOUT), "--max-batch-size", "1")
    with serving(server_repo, folder / "server.log", *limits, "--auth-token-file", str(folder / "token")) as process:
        yield process


def test_oversize_body_is_413(limited):
    image = np.zeros((1, 128, 128, 3), np.uint8)  # 48 KB of pixels: over 0.05 MB as JSON
    status, error = error_of(limited, "POST", "/v2/models/tiny/infer", infer_body(image.tolist(), list(image.shape)), AUTH)
    assert status == 413 and "too large" in error, error
    assert error_of(limited, "POST", "/camserve/models/tiny/explain", bytes(60_000), AUTH)[0] == 413
    form = b"--B\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n" + bytes(60_000) + b"\r\n--B--\r\n"
    headers = {"Content-Type": "multipart/form-data; boundary=B", **AUTH}
    assert error_of(limited, "POST", "/camserve/models/tiny/explain", form, headers)[0] == 413  # a form too


def test_json_over_an_eighth_of_the_limit_is_413_and_binary_is_not(limited):
    """JSON costs about ten times its size to parse: it gets 1/8 of the message limit."""
    image = RNG.integers(0, 256, (1, 40, 40, 3), dtype=np.uint8)  # 4.8 KB of pixels, about 20 KB as JSON
    status, error = error_of(limited, "POST", "/v2/models/tiny/infer", infer_body(image.tolist(), list(image.shape)), AUTH)
    assert status == 413 and "JSON limit" in error and "binary data" in error, error
    body, headers = binary_body(image)
    assert call(limited, "POST", "/v2/models/tiny/infer", body, {**headers, **AUTH})[0] == 200


def test_a_token_that_is_not_utf8_is_401_and_logs_nothing(limited):
    """Header bytes are the caller's to choose: ones that are not UTF-8 are a wrong token,
    not a bug with a traceback in the log that any caller could flood."""
    for sent in (b"Bearer \xff\xfe", AUTH["Authorization"].encode() + b"\x80", b"\xc3\x28"):
        status, headers, body = call(limited, "GET", "/v2/models/tiny", headers={"Authorization": sent})
        assert status == 401 and "bearer token" in json.loads(body)["error"] and headers["WWW-Authenticate"].startswith("Bearer")
    assert call(limited, "GET", "/v2/models/tiny", headers=AUTH)[0] == 200
    assert "unexpected error" not in limited.log.read_text()


def stalled(server, path: str, headers: bytes, body_start: bytes) -> socket.socket:
    """A call that sends its headers (a Content-Length it will not honour) and the
    start of its body, then nothing."""
    s = socket.create_connection(("127.0.0.1", server.http_port), timeout=30)
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n".encode() + headers + b"\r\n" + body_start)
    return s


def trickle(s: socket.socket, stop: threading.Event):
    while not stop.wait(0.1):
        s.send(b"\0")


def answered(s: socket.socket) -> bool:
    return bool(select.select([s], [], [], 0)[0])


def answer(s: socket.socket) -> tuple[int, dict]:
    response = http.client.HTTPResponse(s)
    response.begin()
    return response.status, json.loads(response.read())


def test_stalled_bodies_are_cut_at_the_body_timeout_and_health_metrics_and_the_page_stay_open(limited):
    """Two calls whose bodies never finish fill --max-concurrent-rpcs 2: a JSON infer
    that stops after one byte and a multipart upload that trickles a byte every 0.1 s
    (progress does not extend the deadline). Health, readiness and the page answer at
    once all the same; a third call gets 429 until the body timeout answers the two
    with 408, and then it is served."""
    body, headers = binary_body(IMAGES[:1])
    headers = {**headers, **AUTH}
    cut = threading.Event()
    sent = time.monotonic()
    with (
        stalled(limited, "/v2/models/tiny/infer", b"Content-Length: 1000\r\n", b"{") as infer,
        stalled(
            limited, "/camserve/models/tiny/explain", b"Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 100000\r\n",
            b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n',
        ) as form,
    ):
        threading.Thread(target=trickle, args=(form, cut), daemon=True).start()
        try:
            status, error = error_of(limited, "POST", "/v2/models/tiny/infer", body, headers)
            while status != 429 and not (answered(infer) or answered(form)):  # until both have reached their handlers
                status, error = error_of(limited, "POST", "/v2/models/tiny/infer", body, headers)
            assert status == 429 and "calls in flight" in error, error
            for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/tiny/ready", "/v2/models/tiny/versions/1/ready", "/metrics", "/", "/app.js", "/style.css"):
                assert call(limited, "GET", path, headers=AUTH)[0] == 200, path
            assert error_of(limited, "POST", "/v2/models/tiny/infer", body, headers)[0] == 429  # they took no place
            assert not (answered(infer) or answered(form)), "the body timeout came before the server was seen full"
            for s in (infer, form):
                status, document = answer(s)
                assert status == 408 and "--http-body-timeout" in document["error"], document
            assert time.monotonic() - sent >= BODY_TIMEOUT
        finally:
            cut.set()
    status, _, answered_body = call(limited, "POST", "/v2/models/tiny/infer", body, headers)  # their places are free
    assert status == 200 and json.loads(answered_body)["model_name"] == "tiny"
    assert "unexpected error" not in limited.log.read_text()
