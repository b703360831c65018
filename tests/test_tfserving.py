"""TF Serving's clients, unchanged, against camserve: tensorflow-serving-api's
stubs over gRPC and TF Serving's REST requests, on a real server. The model
`own` is exported with its own input contract (float input, already scaled to
[0, 1], non-square, under Keras's own alias): its answers are compared with the
Keras model itself, and its maps with the native API's for the same image.
`tiny` is exported with camserve's uint8 contract (its signatures as they are)."""

from __future__ import annotations

import base64
import json
import shutil
import urllib.error
import urllib.request

import cv2
import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from camserve.client import Client
from camserve.server.ops.process import serving

HEIGHT, WIDTH = 24, 40


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """(the Keras model, its repository folder, its input alias)"""
    from camserve.export.exporter import ExportOptions, export

    keras.utils.set_random_seed(3)
    inputs = keras.Input((HEIGHT, WIDTH, 3), name="pixels")
    x = layers.Conv2D(6, 3, padding="same", activation="relu", name="conv")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv")(x)
    outputs = layers.Dense(5, activation="softmax", name="predictions")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    root = tmp_path_factory.mktemp("own")
    model.save(root / "own.keras")
    export(ExportOptions(source=str(root / "own.keras"), repo=str(root / "repo"), name="own", preprocess="scale", input_contract="model", xla=False))
    return model, root / "repo"


@pytest.fixture(scope="module")
def tfs(own_model, exports, tmp_path_factory):
    """A server on `own` (model contract) and `tiny` (camserve's contract)."""
    _, repo = own_model
    path, *_ = exports.get("functional")
    shutil.copytree(path, repo / "tiny" / "1")
    with serving(repo, tmp_path_factory.mktemp("logs") / "tfs.log", "--max-batch-size", "8") as process:
        process.stub = prediction_service_pb2_grpc.PredictionServiceStub(process.channel)
        process.models = model_service_pb2_grpc.ModelServiceStub(process.channel)
        yield process


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, HEIGHT, WIDTH, 3), dtype=np.uint8)


def inputs_of(pixels: np.ndarray) -> np.ndarray:
    """What the original clients send: the pixels scaled as the model was trained."""
    return pixels.astype(np.float32) / 255.0


def predict_request(model="own", signature="", version=None, label="", output_filter=(), **tensors) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    for alias, value in tensors.items():
        request.inputs[alias].CopyFrom(value if isinstance(value, type(request.inputs[alias])) else tf.make_tensor_proto(value))
    request.output_filter.extend(output_filter)
    return request


def rest(process, path: str, document=None) -> tuple[int, dict]:
    body = None if document is None else json.dumps(document).encode()
    request = urllib.request.Request(process.http + path, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# -- gRPC: PredictionService and ModelService ------------------------------------


def test_predict_answers_what_the_keras_model_answers(tfs, own_model):
    model, _ = own_model
    x = inputs_of(images(3))
    response = tfs.stub.Predict(predict_request(pixels=x), timeout=60)
    assert list(response.outputs) == ["output_0"], "the original model's output only, by default"
    got = tf.make_ndarray(response.outputs["output_0"])
    np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-6)
    # Clients that read the typed field, as TF Serving's examples do, get the same values.
    np.testing.assert_allclose(np.array(response.outputs["output_0"].float_val).reshape(3, 5), got)
    assert response.model_spec.name == "own" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_tensor_content_and_typed_values_are_both_read(tfs, own_model):
    model, _ = own_model
    x = inputs_of(images(2, seed=1))
    typed = tf.make_tensor_proto(x)
    typed.ClearField("tensor_content")
    typed.float_val.extend(x.ravel().tolist())
    for tensor in (tf.make_tensor_proto(x), typed):
        response = tfs.stub.Predict(predict_request(pixels=tensor), timeout=60)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["output_0"]), model(x).numpy(), rtol=1e-4, atol=1e-6)


def test_heatmaps_are_extra_outputs_equal_to_the_native_apis(tfs):
    pixels = images(2, seed=2)
    response = tfs.stub.Predict(
        predict_request(pixels=inputs_of(pixels), output_filter=["heatmap", "class_index", "output_0"]), timeout=60
    )
    assert set(response.outputs) == {"heatmap", "class_index", "output_0"}
    heatmaps, classes = tf.make_ndarray(response.outputs["heatmap"]), tf.make_ndarray(response.outputs["class_index"])
    with Client(tfs.target, model="own") as native:
        for image, heatmap, class_index in zip(pixels, heatmaps, classes):
            explained = native.explain(image)
            assert explained.class_index == class_index
            np.testing.assert_allclose(heatmap, explained.heatmap, atol=1e-5)


def test_class_and_method_are_optional_inputs(tfs):
    x = inputs_of(images(2, seed=4))
    asked = tfs.stub.Predict(
        predict_request(pixels=x, class_index=np.array([3, 1], np.int32), method=np.array([1, 1], np.int32), output_filter=["class_index", "heatmap"]),
        timeout=60,
    )
    assert tf.make_ndarray(asked.outputs["class_index"]).tolist() == [3, 1]
    default = tfs.stub.Predict(predict_request(pixels=x, class_index=np.array([3, 1], np.int32), output_filter=["heatmap"]), timeout=60)
    assert not np.allclose(tf.make_ndarray(asked.outputs["heatmap"]), tf.make_ndarray(default.outputs["heatmap"]))


def test_camserves_own_signatures_take_uint8_images(tfs):
    pixels = images(2, seed=5)
    explained = tfs.stub.Predict(predict_request(signature="explain", images=pixels), timeout=60)
    assert {"logits", "probabilities", "class_index", "heatmap", "heatmap_scale"} == set(explained.outputs)
    plain = tfs.stub.Predict(predict_request(signature="predict", images=pixels), timeout=60)
    np.testing.assert_allclose(tf.make_ndarray(plain.outputs["probabilities"]), tf.make_ndarray(explained.outputs["probabilities"]), rtol=1e-5)
    own = tfs.stub.Predict(predict_request(pixels=inputs_of(pixels)), timeout=60)
    np.testing.assert_allclose(tf.make_ndarray(own.outputs["output_0"]), tf.make_ndarray(plain.outputs["probabilities"]), rtol=1e-4, atol=1e-6)


def test_a_uint8_contract_model_is_served_by_its_own_signatures(tfs):
    pixels = np.random.default_rng(6).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with Client(tfs.target, model="tiny") as native:
        expected = [native.explain(image) for image in pixels]
    response = tfs.stub.Predict(predict_request(model="tiny", images=pixels), timeout=60)
    assert tf.make_ndarray(response.outputs["class_index"]).tolist() == [e.class_index for e in expected]
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["heatmap"]), np.stack([e.heatmap for e in expected]), atol=1e-5)
    png = [cv2.imencode(".png", image[..., ::-1])[1].tobytes() for image in pixels]
    encoded = tfs.stub.Predict(predict_request(model="tiny", image_bytes=np.array(png, dtype=object), output_filter=["class_index"]), timeout=60)
    assert tf.make_ndarray(encoded.outputs["class_index"]).tolist() == [e.class_index for e in expected]


def test_model_metadata_lists_the_signatures(tfs):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "own"
    response = tfs.stub.GetModelMetadata(request, timeout=30)
    definitions = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(definitions)
    default = definitions.signature_def["serving_default"]
    assert default.inputs["pixels"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in default.inputs["pixels"].tensor_shape.dim] == [-1, HEIGHT, WIDTH, 3]
    assert {"output_0", "heatmap", "heatmap_scale", "class_index", "logits"} <= set(default.outputs)
    assert {"serving_default", "explain", "predict"} <= set(definitions.signature_def)
    assert response.model_spec.version.value == 1


def test_model_status_says_available(tfs):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "own"
    (status,) = tfs.models.GetModelStatus(request, timeout=30).model_version_status
    assert status.version == 1 and status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0


@pytest.mark.parametrize(
    "request_, code",
    [
        (dict(model="nope"), grpc.StatusCode.NOT_FOUND),
        (dict(version=7), grpc.StatusCode.NOT_FOUND),
        (dict(label="canary"), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(signature="serving_nope"), grpc.StatusCode.FAILED_PRECONDITION),
        (dict(output_filter=["scores"]), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(output_filter=["output_0", "output_0"]), grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["model", "version", "label", "signature", "output", "duplicate output"],
)
def test_unknown_names_get_tf_servings_statuses(tfs, request_, code):
    with pytest.raises(grpc.RpcError) as err:
        tfs.stub.Predict(predict_request(pixels=inputs_of(images(1)), **request_), timeout=30)
    assert err.value.code() == code, err.value.details()


@pytest.mark.parametrize(
    "tensors, says",
    [
        (dict(image=np.zeros((1, HEIGHT, WIDTH, 3), np.float32)), "input tensor alias not found in signature: image"),
        (dict(pixels=np.zeros((1, HEIGHT, WIDTH, 3), np.float64)), "Expects arg[0] to be float but double is provided"),
        (dict(pixels=np.zeros((1, WIDTH, HEIGHT, 3), np.float32)), "the model takes float32"),
        (dict(class_index=np.zeros(1, np.int32)), "input 'pixels' is missing"),
        (dict(pixels=np.zeros((1, HEIGHT, WIDTH, 3), np.float32), class_index=np.array([9], np.int32)), "class_index out of range"),
    ],
    ids=["alias", "dtype", "shape", "missing", "class"],
)
def test_bad_inputs_are_invalid_argument(tfs, tensors, says):
    with pytest.raises(grpc.RpcError) as err:
        tfs.stub.Predict(predict_request(**tensors), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in err.value.details(), err.value.details()


def _shaped(dtype, dims, values=()) -> tf.make_tensor_proto:
    tensor = tf.make_tensor_proto(np.zeros(0, np.int32))
    tensor.dtype = dtype
    tensor.ClearField("tensor_shape")
    tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=d) for d in dims)
    tensor.int_val.extend(values)
    return tensor


@pytest.mark.parametrize(
    "alias, dims, values",
    [
        ("class_index", [0, 2**31, 2**31], []),  # found by test_fuzz: numpy cannot make the empty array
        ("class_index", [0, 2**40, 2**40], []),
        ("class_index", [0, 2**31 - 1, 2**31 - 1], []),  # each dim an int32, their extent still too big
        ("class_index", [2**40, 0, 2**40], []),
        ("class_index", [0, 2**62, 2**62], []),  # the extent overflows int64
        ("class_index", [0, 2**63 - 1, 2**63 - 1, 2**63 - 1], []),
        ("class_index", [2**63 - 1, 2**63 - 1], [1]),  # one value filling it
        ("class_index", [-1, 2], []),
        ("class_index", [0, -(2**63)], []),
        ("class_index", [0] * 65, []),  # past numpy's rank
        ("class_index", [1] * 65, [1]),
        ("images", [0, 2**31, 2**31, 3], []),
    ],
    ids=["0,2^31,2^31", "0,2^40,2^40", "0,int32max,int32max", "2^40,0,2^40", "0,2^62,2^62", "0,int64max x3",
         "int64max^2 filled", "negative", "0,int64min", "rank 65 empty", "rank 65 filled", "images 0,2^31,2^31,3"],
)
def test_huge_or_negative_dims_are_invalid_argument_without_a_traceback(tfs, alias, dims, values):
    from tensorflow.core.framework import types_pb2

    dtype = types_pb2.DT_UINT8 if alias == "images" else types_pb2.DT_INT32
    logged = tfs.log.stat().st_size
    with pytest.raises(grpc.RpcError) as err:
        tfs.stub.Predict(predict_request(model="tiny", **{alias: _shaped(dtype, dims, values)}), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{err.value.code()}: {err.value.details()}"
    assert alias in err.value.details() and "shape" in err.value.details(), err.value.details()
    with tfs.log.open("rb") as log:
        log.seek(logged)
        assert b"Traceback" not in log.read(), tfs.log_tail()


# -- REST: TF Serving's API and KServe V1's :explain ------------------------------


def test_rest_row_and_columnar_requests_answer_the_keras_models_outputs(tfs, own_model):
    model, _ = own_model
    x = inputs_of(images(2, seed=7))
    expected = model(x).numpy()
    status, rows = rest(tfs, "/v1/models/own:predict", {"instances": x.tolist()})
    assert status == 200
    np.testing.assert_allclose(np.array(rows["predictions"]), expected, rtol=1e-4, atol=1e-6)
    status, columns = rest(tfs, "/v1/models/own/versions/1:predict", {"inputs": {"pixels": x.tolist()}})
    assert status == 200
    np.testing.assert_allclose(np.array(columns["outputs"]), expected, rtol=1e-4, atol=1e-6)
    status, named = rest(tfs, "/v1/models/own:predict", {"instances": [{"pixels": row, "class_index": 2} for row in x.tolist()]})
    assert status == 200
    np.testing.assert_allclose(np.array(named["predictions"]), expected, rtol=1e-4, atol=1e-6)


def test_rest_explain_answers_predictions_with_their_maps(tfs):
    pixels = images(2, seed=8)
    status, answer = rest(tfs, "/v1/models/own:explain", {"instances": inputs_of(pixels).tolist()})
    assert status == 200 and len(answer["predictions"]) == 2 and len(answer["explanations"]) == 2
    with Client(tfs.target, model="own") as native:
        for image, explanation in zip(pixels, answer["explanations"]):
            explained = native.explain(image)
            assert explanation["class_index"] == explained.class_index
            np.testing.assert_allclose(np.array(explanation["heatmap"]), explained.heatmap, atol=1e-5)


def test_rest_b64_images_and_signature_name(tfs):
    pixels = np.random.default_rng(9).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    b64 = [{"b64": base64.b64encode(cv2.imencode(".png", image[..., ::-1])[1].tobytes()).decode()} for image in pixels]
    status, bare = rest(tfs, "/v1/models/tiny:predict", {"signature_name": "predict", "instances": b64})
    assert status == 200, bare
    status, named = rest(tfs, "/v1/models/tiny:predict", {"signature_name": "predict", "inputs": {"images": pixels.tolist()}})
    assert status == 200, named
    np.testing.assert_allclose(
        np.array([p["probabilities"] for p in bare["predictions"]]), np.array(named["outputs"]["probabilities"]), rtol=1e-5
    )


def test_rest_status_and_metadata(tfs):
    status, answer = rest(tfs, "/v1/models/own")
    assert status == 200
    assert answer == {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    status, metadata = rest(tfs, "/v1/models/own/metadata")
    assert status == 200 and metadata["model_spec"] == {"name": "own", "signature_name": "", "version": "1"}
    pixels = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["pixels"]
    assert pixels["dtype"] == "DT_FLOAT" and [d["size"] for d in pixels["tensor_shape"]["dim"]] == ["-1", str(HEIGHT), str(WIDTH), "3"]


@pytest.mark.parametrize(
    "path, document, code",
    [
        ("/v1/models/nope:predict", {"instances": [[0]]}, 404),
        ("/v1/models/own/versions/7:predict", {"instances": [[0]]}, 404),
        ("/v1/models/own/labels/canary:predict", {"instances": [[0]]}, 400),
        ("/v1/models/own:predict", {"signature_name": "nope", "instances": [[0]]}, 400),
        ("/v1/models/own:predict", {"instances": [{"image": 1}]}, 400),
        ("/v1/models/own:predict", {"instances": [[1, 2], [3]]}, 400),
        ("/v1/models/own:predict", {"inputs": {"pixels": {"b64": "AAAA"}}}, 400),
        ("/v1/models/own:predict", {"instances": [], "inputs": []}, 400),
        ("/v1/models/nope", None, 404),
        ("/v1/models/own/versions/7", None, 404),
    ],
    ids=["model", "version", "label", "signature", "alias", "ragged", "b64 float", "both", "status model", "status version"],
)
def test_rest_errors_have_tf_servings_codes_and_shape(tfs, path, document, code):
    status, answer = rest(tfs, path, document)
    assert status == code and set(answer) == {"error"} and answer["error"], answer


def test_the_readme_migration_works(tmp_path):
    """README's "Replacing TF Serving", steps 1-3 as written (paths and ports swapped for
    the test's): the export command, the serve command, the Python client."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from camserve.server.ops.process import ServerProcess, free_port

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("## Replacing TF Serving") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    export_line = next(b for kind, b in blocks if "camserve export" in b).strip()
    serve_line = next(b for kind, b in blocks if "camserve serve" in b).strip().splitlines()[0]
    client = next(b for kind, b in blocks if kind == "python")

    keras.utils.set_random_seed(5)
    inputs = keras.Input((HEIGHT, WIDTH, 3), name="input_layer")
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="last_conv")(inputs)
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(x)))
    model.save(tmp_path / "model.keras")
    models_dir = tmp_path / "models"
    grpc_port, rest_port = free_port(), free_port()

    def swapped(line: str) -> list[str]:
        line = line.replace("/models", str(models_dir)).replace("model.keras", str(tmp_path / "model.keras"))
        line = line.replace("8500", str(grpc_port)).replace("8501", str(rest_port))
        return [sys.executable, "-m", "camserve", *line.split()[1:]]

    exported = subprocess.run(swapped(export_line), capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-2000:]
    # The README's ports are TF Serving's; here the metrics port (default 8501) is off to stay off them,
    # and the batch ladder short: the step's point is the command, not batching (each size is a compile).
    command = [*swapped(serve_line), "--host", "127.0.0.1", "--metrics-port", "0", "--max-batch-size", "2"]
    process = ServerProcess(tmp_path, tmp_path / "serve.log", command=command, port=grpc_port)
    try:
        process.wait_for("SERVING")
        batch = inputs_of(images(2, seed=10))
        scope = {"batch": batch}
        exec(client.replace("localhost:8500", f"127.0.0.1:{grpc_port}"), scope)  # noqa: S102 - the README's own code
        np.testing.assert_allclose(scope["probabilities"], model(batch).numpy(), rtol=1e-4, atol=1e-6)
        assert scope["heatmaps"].shape == (2, HEIGHT, WIDTH) and np.isfinite(scope["heatmaps"]).all()
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/models/resnet", timeout=30).read())
        assert status["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        process.terminate()
