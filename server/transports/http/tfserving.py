"""TensorFlow Serving's REST API, and KServe V1's (the same dialect, plus
`:explain`), on camserve's HTTP port:

    GET  /v1/models/NAME[/versions/N | /labels/L]            model status
    GET  /v1/models/NAME[/versions/N | /labels/L]/metadata   signatures
    POST /v1/models/NAME[/versions/N | /labels/L]:predict    {"instances": ...} or {"inputs": ...}
    POST /v1/models/NAME[/versions/N | /labels/L]:explain    the same, answered with every map

Requests are read as TF Serving reads them (json_tensor.cc): row (`instances`,
bare values for the signature's first input or objects by alias, the batch
being the instances) or columnar (`inputs`: a value or an object by alias);
`{"b64": ...}` only for string tensors (`image_bytes`; bare b64 instances go
there); floats take any JSON number, integers only JSON integers. Answers:
`{"predictions": ...}` for rows (a list of values for one output, of objects
for several), `{"outputs": ...}` for columns; `:explain` answers KServe V1's
`{"predictions": ..., "explanations": ...}`, the maps and scores beside the
plain prediction. Errors are `{"error": "..."}` with TF Serving's HTTP codes
(server.py). Each route has the protocol answer (../tfserving.py), as gRPC's
services do."""

from __future__ import annotations

import base64
import binascii
import json

import numpy as np
from aiohttp import web

from ...models.registry import version_number
from ...pipeline.errors import invalid
from ..tfserving import STRING, Signature, Spec, TensorSpec, TFServing

# A body at least this large is parsed into arrays on the decode pool, not on the event loop.
HEAVY_BODY = 64 * 1024
KINDS = {"f": "biuf", "i": "iu", "u": "iu", "b": "b"}  # numpy kinds a JSON value may have, by the tensor's dtype kind


def _is_b64(value) -> bool:
    return isinstance(value, dict) and list(value) == ["b64"]


def _bytes(alias: str, value) -> bytes:
    if _is_b64(value) and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"input {alias!r}: Unable to base64 decode") from None
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    raise invalid(f"input {alias!r} is a string tensor: its values are strings or {{\"b64\": ...}} objects")


def _value(alias: str, value, tensor: TensorSpec | None):
    """A JSON value as the signature's tensor (None: an alias the signature lacks, refused by name later)."""
    if tensor is None:
        return []
    if tensor.dtype == STRING:
        return [_bytes(alias, v) for v in (value if isinstance(value, list) else [value])]
    try:
        array = np.asarray(value)
    except ValueError:
        raise invalid(f"input {alias!r}: a list at an unexpected size (not a rectangular list of values)") from None
    dtype = np.dtype(tensor.dtype)
    allowed = KINDS[dtype.kind]
    if array.size and array.dtype.kind not in allowed:
        what = "booleans" if dtype.kind == "b" else "JSON integers" if dtype.kind in "iu" else "numbers"
        raise invalid(f"input {alias!r} is {tensor.dtype}: its values are {what}")
    if dtype.kind in "iu" and array.size:
        limits = np.iinfo(dtype)
        if int(array.min()) < limits.min or int(array.max()) > limits.max:
            raise invalid(f"input {alias!r}: {tensor.dtype} values run from {limits.min} to {limits.max}")
    return array.astype(dtype)


def _bare_alias(signature: Signature, value) -> str:
    """Where bare values go: b64 objects to the first string input, others to the first input."""
    first = value[0] if isinstance(value, list) and value else value
    if _is_b64(first):
        return next((alias for alias, t in signature.inputs.items() if t.dtype == STRING), next(iter(signature.inputs)))
    return next(iter(signature.inputs))


def _rows(instances, signature: Signature) -> dict:
    if not isinstance(instances, list):
        raise invalid("Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid("No values in 'instances' array")
    named = [isinstance(each, dict) and not _is_b64(each) for each in instances]
    if any(named) and not all(named):
        raise invalid(f"Expecting object but got list at item {named.index(False)} of input list")
    if not any(named):
        alias = _bare_alias(signature, instances)
        return {alias: _value(alias, instances, signature.inputs[alias])}
    keys = list(instances[0])
    for i, each in enumerate(instances):
        if set(each) != set(keys):
            raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object: must only have keys: {','.join(keys)}")
    return {alias: _value(alias, [each[alias] for each in instances], signature.inputs.get(alias)) for alias in keys}


def _columns(inputs, signature: Signature) -> dict:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return {alias: _value(alias, value, signature.inputs.get(alias)) for alias, value in inputs.items()}
    alias = _bare_alias(signature, inputs)
    return {alias: _value(alias, inputs, signature.inputs[alias])}


def _document(body: bytes) -> dict:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise invalid(f"JSON Parse error: {err}") from None
    if not isinstance(document, dict):
        raise invalid("JSON Value: the request is not an object")
    if not isinstance(document.get("signature_name", ""), str):
        raise invalid("'signature_name' key must be a string value.")
    if ("instances" in document) == ("inputs" in document):
        raise invalid(
            "expecting only one of 'inputs' or 'instances' keys to exist" if "inputs" in document else "Missing 'inputs' or 'instances' key"
        )
    return document


def _rows_of(outputs: dict) -> list:
    """[N, ...] outputs as a list of rows: the row itself for one output, {alias: row} for several."""
    columns = {alias: array.tolist() for alias, array in outputs.items()}
    if len(columns) == 1:
        return next(iter(columns.values()))
    return [dict(zip(columns, row)) for row in zip(*columns.values())]


def _json(document: dict) -> web.Response:
    return web.Response(body=json.dumps(document, separators=(",", ":")), content_type="application/json")


def routes(tfserving: TFServing, max_json: int) -> list[web.RouteDef]:
    """`max_json`: the largest JSON body, in bytes."""

    def spec(request, document: dict | None = None) -> Spec:
        info = request.match_info
        signature = (document or {}).get("signature_name", "")
        return Spec(info["model"], version_number(info.get("version", "")), info.get("label", ""), signature)

    async def status(request):
        return _json(tfserving.status(spec(request)))

    async def metadata(request):
        model, definitions = tfserving.metadata(spec(request))
        model_spec = {"name": model.name, "signature_name": "", "version": str(model.version)}
        return _json({"model_spec": model_spec, "metadata": {"signature_def": definitions}})

    async def answer(request, explain: bool):
        body = await request.read()  # aiohttp refuses a body over the message limit (413)
        if len(body) > max_json:
            raise invalid(f"the JSON body is {len(body)} bytes, over the {max_json} this server parses (--max-message-mb / JSON share)")
        document = _document(body)
        row = "instances" in document

        def read(signature: Signature) -> dict:
            return _rows(document["instances"], signature) if row else _columns(document["inputs"], signature)

        model, name, outputs = await tfserving.predict(
            spec(request, document), read, [], None, "tfserving_rest", explain=explain, heavy=len(body) >= HEAVY_BODY
        )
        if explain:
            _, signature = tfserving.signature(model, name)
            plain = {alias: outputs.pop(alias) for alias in list(outputs) if alias in signature.plain}
            return _json({"predictions": _rows_of(plain), "explanations": _rows_of(outputs)})
        if row:
            return _json({"predictions": _rows_of(outputs)})
        return _json({"outputs": next(iter(outputs.values())).tolist() if len(outputs) == 1 else {a: v.tolist() for a, v in outputs.items()}})

    async def predict(request):
        return await answer(request, explain=False)

    async def explain(request):
        return await answer(request, explain=True)

    table = []
    for prefix in ("/v1/models/{model:[^/:]+}", "/v1/models/{model:[^/:]+}/versions/{version:[^/:]+}", "/v1/models/{model:[^/:]+}/labels/{label:[^/:]+}"):
        table += [
            ("GET", prefix, status),
            ("GET", prefix + "/metadata", metadata),
            ("POST", prefix + ":predict", predict),
            ("POST", prefix + ":explain", explain),
        ]
    return [web.route(method, path, handler) for method, path, handler in table]
