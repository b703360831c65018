"""KServe v2 / Open Inference Protocol over HTTP (REST), as Triton serves it: JSON
tensors, and Triton's binary-tensor extension (a JSON header of
`Inference-Header-Content-Length` bytes, then the tensors' raw bytes in order).

Each route turns the HTTP request into the protocol's request message, has the
protocol answer it (../kserve.py, as gRPC does), and turns its answer back into
JSON: one pipeline for both transports. JSON tensor data becomes raw little-endian bytes
first, so decoding and every check on it are the gRPC path's too."""

from __future__ import annotations

import json
import math
import struct

import grpc
import numpy as np
from aiohttp import web

from camserve.kserve import grpc_predict_v2_pb2 as kpb

from ...models.registry import version_number
from ...pipeline.errors import RequestError, invalid
from ..kserve import KServe
from ..tensors import NUMPY

HEADER_LENGTH = "Inference-Header-Content-Length"
KINDS = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}  # JSON's names, for errors


def as_json(message) -> dict:
    """A protobuf message as the protocol's JSON: field names as in the .proto, every
    scalar and list present (Triton's tools read zero counts too), int64 as numbers
    (protobuf's own JSON writes them as strings, which perf_analyzer rejects)."""
    out = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type and field.message_type.GetOptions().map_entry:
            kind = field.message_type.fields_by_name["value"]
            out[field.name] = {key: _json_value(kind, item) for key, item in value.items()}
        elif field.is_repeated:
            out[field.name] = [_json_value(field, item) for item in value]
        elif (field.message_type or field.containing_oneof) and not message.HasField(field.name):
            continue
        else:
            out[field.name] = _json_value(field, value)
    return out


def _json_value(field, value):
    if field.message_type:
        return as_json(value)
    if field.enum_type:
        return field.enum_type.values_by_number[value].name
    return value


def _elements(data, datatype: str, name: str) -> np.ndarray:
    """A JSON tensor's `data` (flat or nested, row-major) as a flat array of the
    datatype, refused when a value does not fit it."""
    try:
        array = np.asarray(data, dtype=object if datatype == "BYTES" else None).reshape(-1)
    except ValueError:
        raise invalid(f"input {name!r}: data is not a rectangular list of values") from None
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in array):
            raise invalid(f"input {name!r}: BYTES data are strings")
        return array
    kind = array.dtype.kind if array.size else "i"
    allowed = {"BOOL": "b", "FP32": "biuf", "FP64": "biuf"}.get(datatype, "iu")
    if kind not in allowed:
        raise invalid(f"input {name!r}: {datatype} data must be {'booleans' if datatype == 'BOOL' else 'numbers'}, not {array.dtype}")
    if allowed == "iu" and array.size:
        limits = np.iinfo(NUMPY[datatype])
        if int(array.min()) < limits.min or int(array.max()) > limits.max:
            raise invalid(f"input {name!r}: {datatype} values run from {limits.min} to {limits.max}")
    return array


def _raw(tensor: dict, name: str) -> bytes:
    datatype = tensor["datatype"]
    if datatype not in NUMPY and datatype != "BYTES":
        raise invalid(f"input {name!r} has unsupported datatype {datatype!r}")
    values = _elements(tensor["data"], datatype, name)
    if datatype == "BYTES":
        try:
            encoded = [v.encode() for v in values]
        except UnicodeEncodeError:  # a lone surrogate, escaped in the JSON
            raise invalid(f"input {name!r}: BYTES data must be valid Unicode") from None
        return b"".join(struct.pack("<I", len(e)) + e for e in encoded)
    return values.astype(NUMPY[datatype]).tobytes()


def _member(document: dict, key: str, kind: type, where: str = ""):
    """document[key] (None when absent), refused unless it is a `kind`."""
    value = document.get(key)
    if value is not None and not isinstance(value, kind):
        raise invalid(f'{where}"{key}" must be {KINDS[kind]}, not {type(value).__name__}')
    return value


def _text(value, what: str) -> str:
    """A string protobuf can carry: valid Unicode, which a lone surrogate (an escaped
    half of a UTF-16 pair in JSON) is not."""
    if not isinstance(value, str):
        raise invalid(f"{what} must be a string")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise invalid(f"{what} {value!r} is not valid Unicode") from None
    return value


def _input(tensor, binary: memoryview, offset: int) -> tuple[kpb.ModelInferRequest.InferInputTensor, bytes, int]:
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
        raise invalid("each input is an object with a name, a shape, a datatype and data")
    name, shape, datatype = _text(tensor["name"], "an input's name"), tensor.get("shape"), tensor.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise invalid(f"input {name!r}: shape must be a list of integers")
    _text(datatype, f"input {name!r}: datatype (such as UINT8)")
    # Each dimension bounded too: with a 0 among them the product says nothing of the others.
    if any(not 0 <= d <= 2**40 for d in shape) or math.prod(shape) > 2**40:
        raise invalid(f"input {name!r} has shape {shape}")
    size = (_member(tensor, "parameters", dict, f"input {name!r}: ") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid(f"input {name!r}: binary_data_size must be a number of bytes, not {size!r}")
        if offset + size > len(binary):
            raise invalid(f"input {name!r}: binary_data_size {size} runs past the {len(binary) - offset} binary bytes left")
        raw, offset = bytes(binary[offset : offset + size]), offset + size
    elif "data" in tensor:
        raw = _raw(tensor, name)
    else:
        raise invalid(f"input {name!r} has neither data nor parameters.binary_data_size")
    return kpb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape), raw, offset


def _parameter(message: kpb.InferParameter, name: str, value):
    """A request parameter as the gRPC message carries it (kserve.py reads them there)."""
    if isinstance(value, bool):
        message.bool_param = value
    elif isinstance(value, int) and -(2**63) <= value < 2**63:
        message.int64_param = value
    elif isinstance(value, str):
        message.string_param = _text(value, f"parameter {name!r}")
    elif isinstance(value, float):
        message.double_param = value
    else:
        raise invalid(f"parameter {name!r} is a boolean, an integer, a number or a string")


def parse_infer(
    body: bytes, header_length: str | None, model: str, version: str, max_json: int
) -> tuple[kpb.ModelInferRequest, set[str]]:
    """The request message, and the outputs to send as binary data. A JSON part over
    `max_json` bytes is refused (413) before it is parsed."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        # isdigit() alone takes "²", which int() refuses.
        if not (header_length.isascii() and header_length.isdigit()) or int(header_length) > len(body):
            raise invalid(f"{HEADER_LENGTH} {header_length!r} is not a length within the {len(body)}-byte body")
        header, binary = body[: int(header_length)], memoryview(body)[int(header_length) :]
    if len(header) > max_json:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"a JSON request of {len(header) / 2**20:.1f} MB is over the {max_json / 2**20:.2f} MB JSON limit (1/8 of --max-message-mb: "
            "JSON costs about 10 times its size to parse): send large tensors as binary data (Inference-Header-Content-Length) or image_bytes",
            http_status=413,
        )
    try:
        document = json.loads(header)
    except (ValueError, UnicodeDecodeError) as err:
        raise invalid(f"the request is not valid JSON: {err}") from None
    except RecursionError:
        raise invalid("the request's JSON is nested too deeply") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise invalid('the request is a JSON object with an "inputs" list')
    parameters = _member(document, "parameters", dict) or {}
    request_id = _member(document, "id", str) or ""
    request = kpb.ModelInferRequest(model_name=model, model_version=version, id=_text(request_id, '"id"'))
    for name, value in parameters.items():
        _parameter(request.parameters[_text(name, "a parameter's name")], name, value)
    binary_output = _member(parameters, "binary_data_output", bool, '"parameters": ') or False
    offset = 0
    for tensor in document["inputs"]:
        message, raw, offset = _input(tensor, binary, offset)
        request.inputs.append(message)
        request.raw_input_contents.append(raw)
    if offset != len(binary):
        raise invalid(f"{len(binary) - offset} binary bytes after the last input's binary_data_size")
    binary_outputs = set()
    outputs = _member(document, "outputs", list) or []
    for output in outputs:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise invalid('each requested output is an object with a "name"')
        name = _text(output["name"], "an output's name")
        wanted = _member(output, "parameters", dict, f"output {name!r}: ") or {}
        if "classification" in wanted:
            raise invalid(f"output {name!r}: the classification extension is not supported; read probabilities")
        request.outputs.add(name=name)
        binary = _member(wanted, "binary_data", bool, f"output {name!r}: ")
        if binary_output if binary is None else binary:
            binary_outputs.add(name)
    if not outputs and binary_output:
        binary_outputs = {"*"}
    return request, binary_outputs


def infer_response(response: kpb.ModelInferResponse, binary_outputs: set[str]) -> web.Response:
    outputs, blobs = [], []
    for tensor, raw in zip(response.outputs, response.raw_output_contents):
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if "*" in binary_outputs or tensor.name in binary_outputs:
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = np.frombuffer(raw, NUMPY[tensor.datatype]).tolist()
        outputs.append(entry)
    document = {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
    if response.id:
        document["id"] = response.id
    header = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=b"".join([header, *blobs]), content_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))}
    )


def _ok(flag: bool, what: str) -> web.Response:
    """200 when `flag`, else 503 with why (Triton's probes look at the status only)."""
    if flag:
        return web.Response(status=200)
    return web.json_response({"error": f"{what} is not ready"}, status=503)


def routes(kserve: KServe, max_json: int) -> list[web.RouteDef]:
    """`kserve`: the protocol that answers; `max_json`: the largest JSON part of an
    infer request, in bytes."""
    process = kserve.registry.process

    def target(request) -> tuple[str, str]:
        return request.match_info["model"], request.match_info.get("version", "")

    async def server_metadata(request):
        return web.json_response(as_json(kserve.server_metadata()))

    async def live(request):
        return _ok(process.live, "the server")

    async def ready(request):
        return _ok(process.ready, "the server")

    async def all_statistics(request):
        return web.json_response(as_json(kserve.model_statistics("", "")))

    async def model_metadata(request):
        name, version = target(request)
        return web.json_response(as_json(kserve.model_metadata(name, version)))

    async def model_ready(request):
        """200, or why not as the error: 404 for a model not served, 503 while it loads
        or the server drains (gRPC's ModelReady can only say false)."""
        name, version = target(request)
        kserve.registry.get(name, version_number(version))
        return _ok(process.ready, "the server")

    async def model_config(request):
        name, version = target(request)
        answer = kserve.model_config(name, version)
        return web.json_response(as_json(answer.config))  # Triton answers with the config itself

    async def model_statistics(request):
        name, version = target(request)
        return web.json_response(as_json(kserve.model_statistics(name, version)))

    async def infer(request):
        name, version = target(request)
        body = await request.read()  # aiohttp refuses a body over the message limit (413)
        message, binary_outputs = parse_infer(body, request.headers.get(HEADER_LENGTH), name, version, max_json)
        return infer_response(await kserve.infer(message, None, "kserve_http"), binary_outputs)

    table = [
        ("GET", "/v2", server_metadata),
        ("GET", "/v2/health/live", live),
        ("GET", "/v2/health/ready", ready),
        ("GET", "/v2/models/stats", all_statistics),  # before /v2/models/{model}: "stats" is no model
    ]
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        table += [
            ("GET", prefix, model_metadata),
            ("GET", prefix + "/ready", model_ready),
            ("GET", prefix + "/config", model_config),
            ("GET", prefix + "/stats", model_statistics),
            ("POST", prefix + "/infer", infer),
        ]
    return [web.route(method, path, handler) for method, path, handler in table]

