"""TensorFlow Serving's gRPC services on camserve's port: PredictionService
(Predict, GetModelMetadata) and ModelService (GetModelStatus), each RPC the
protocol's answer (../tfserving.py) or its failure as the call's status.
Classify, Regress, MultiInference and HandleReloadConfigRequest answer
UNIMPLEMENTED (the servicers' own default): camserve serves classifiers
through Predict, and reads its repository by itself.

TensorProto in as TF Serving takes it (tensor_content or the typed `*_val`
fields, one value filling the whole shape up to MAX_TYPED_VALUES elements), of
exactly the signature's dtype;
out with the typed fields, as TF Serving answers, so that clients reading
`outputs[...].float_val` and those calling tf.make_ndarray() both work.

The messages are tensorflow-serving-api's, which imports TensorFlow: this is the
one transport that does, and only the server process (app.py) loads it."""

from __future__ import annotations

import functools
import math

import numpy as np
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from ...pipeline.errors import failing_with_status, invalid
from ..tensors import INLINE_TYPED_VALUES, MAX_TYPED_VALUES
from ..tfserving import STRING, Signature, Spec, TFServing

# dtype -> (numpy dtype, the TensorProto field its typed values travel in)
FIELDS = {
    types_pb2.DT_FLOAT: ("float32", "float_val"),
    types_pb2.DT_DOUBLE: ("float64", "double_val"),
    types_pb2.DT_HALF: ("float16", "half_val"),
    types_pb2.DT_INT8: ("int8", "int_val"),
    types_pb2.DT_INT16: ("int16", "int_val"),
    types_pb2.DT_INT32: ("int32", "int_val"),
    types_pb2.DT_UINT8: ("uint8", "int_val"),
    types_pb2.DT_UINT16: ("uint16", "int_val"),
    types_pb2.DT_INT64: ("int64", "int64_val"),
    types_pb2.DT_BOOL: ("bool", "bool_val"),
}
DTYPES = {numpy: dtype for dtype, (numpy, _) in FIELDS.items()}
DTYPES[STRING] = types_pb2.DT_STRING
# A shape is checked before numpy sees it. No tensor that carries its values has more
# elements than MAX_ELEMENTS (a protobuf message is under 2 GiB); an empty one (a 0
# among its dimensions) is held to the same bound on its other dimensions' product,
# which numpy refuses to make past its byte size (even [0, 2**31 - 1, 2**31 - 1]).
# MAX_RANK: numpy makes arrays of up to 32 dimensions (64 from numpy 2); TF Serving
# signatures here take 4 at most.
MAX_ELEMENTS = 2**31 - 1
MAX_RANK = 32


def _spec(request) -> Spec:
    if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
    spec = request.model_spec
    if not spec.name:
        raise invalid("ModelSpec has no name specified.")
    version = spec.version.value if spec.HasField("version") else 0
    return Spec(spec.name, version, spec.version_label, spec.signature_name)


def _typed_values(request) -> int:
    return sum(len(getattr(t, field)) for t in request.inputs.values() for field in ("float_val", "int_val", "int64_val", "string_val", "half_val", "double_val", "bool_val"))


def _shape(alias: str, tensor_shape) -> list[int]:
    """The TensorShapeProto's dimensions, refused unless numpy can make an array of them."""
    if tensor_shape.unknown_rank:
        raise invalid(f"tensor parsing error: {alias} (its shape is of unknown rank; a tensor's shape is known)")
    if len(tensor_shape.dim) > MAX_RANK:
        raise invalid(f"tensor parsing error: {alias} (a shape of {len(tensor_shape.dim)} dimensions, over the {MAX_RANK} this server takes)")
    shape = [d.size for d in tensor_shape.dim]
    if any(d < 0 for d in shape):
        raise invalid(f"tensor parsing error: {alias} (shape {shape}: a dimension is negative)")
    extent = 1  # Python ints, stopping at the bound: numpy's would overflow on hostile shapes
    for d in shape:
        extent *= max(d, 1)
        if extent > MAX_ELEMENTS:
            raise invalid(
                f"tensor parsing error: {alias} (shape {shape}: its non-zero dimensions multiply past the {MAX_ELEMENTS} elements this server takes)"
            )
    return shape


def _array(alias: str, tensor, expected: str, position: int):
    """A TensorProto as the signature's tensor: an ndarray, or a list of bytes for DT_STRING."""
    if tensor.dtype != DTYPES[expected]:
        got = types_pb2.DataType.Name(tensor.dtype)[3:].lower() if tensor.dtype in types_pb2.DataType.values() else str(tensor.dtype)
        wanted = types_pb2.DataType.Name(DTYPES[expected])[3:].lower()
        raise invalid(f"Expects arg[{position}] to be {wanted} but {got} is provided (input {alias!r})")
    shape = _shape(alias, tensor.tensor_shape)
    count = math.prod(shape)
    if expected == STRING:
        values = list(tensor.string_val)
        if len(values) != count:
            raise invalid(f"tensor parsing error: {alias} ({len(values)} strings for shape {shape})")
        return values
    dtype, field = FIELDS[tensor.dtype]
    dtype = np.dtype(dtype)
    if tensor.tensor_content:
        if len(tensor.tensor_content) != count * dtype.itemsize:
            raise invalid(f"tensor parsing error: {alias} ({len(tensor.tensor_content)} bytes for {dtype.name} {shape})")
        return np.frombuffer(tensor.tensor_content, dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    values = getattr(tensor, field)
    if len(values) not in (count, 1) or (count == 0 and values):
        raise invalid(f"tensor parsing error: {alias} ({len(values)} values for shape {shape})")
    if count > MAX_TYPED_VALUES:  # one value filling a vast shape would be vast: bounded as typed values are
        raise invalid(f"tensor parsing error: {alias} (one value filling {count} elements, over the {MAX_TYPED_VALUES} this server converts)")
    if field == "half_val":  # float16 bit patterns in int32s
        array = np.array(values, np.uint16).view(np.float16)
    else:
        array = np.array(values, dtype)
    return np.broadcast_to(array, shape) if len(values) == 1 and count != 1 else array.reshape(shape)


def _tensors(inputs, signature: Signature) -> dict:
    """The request's TensorProtos by alias, each of its signature's dtype (aliases the
    signature lacks are refused by the protocol, by name)."""
    known = list(signature.inputs)
    return {
        alias: _array(alias, tensor, signature.inputs[alias].dtype, known.index(alias)) if alias in signature.inputs else []
        for alias, tensor in inputs.items()
    }


def _fill(tensor, array: np.ndarray):
    """An output as TF Serving sends it: dtype, shape, typed values."""
    dtype = DTYPES[array.dtype.name]
    tensor.dtype = dtype
    tensor.tensor_shape.dim.extend(tensor.tensor_shape.Dim(size=d) for d in array.shape)
    getattr(tensor, FIELDS[dtype][1]).extend(array.ravel().tolist())


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, tfserving: TFServing):
        self.tfserving = tfserving

    @failing_with_status
    async def Predict(self, request, context):
        typed = _typed_values(request)
        if typed > MAX_TYPED_VALUES:
            raise invalid(f"the request's typed values are {typed}, over the {MAX_TYPED_VALUES} this server converts: send tensor_content")
        model, signature, outputs = await self.tfserving.predict(
            _spec(request), functools.partial(_tensors, request.inputs), list(request.output_filter), context, "tfserving",
            heavy=typed > INLINE_TYPED_VALUES,
        )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.model_spec.signature_name = signature
        for alias, array in outputs.items():
            _fill(response.outputs[alias], array)
        return response

    @failing_with_status
    async def GetModelMetadata(self, request, context):
        spec = _spec(request)
        fields = list(request.metadata_field)
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        if unsupported := [f for f in fields if f != "signature_def"]:
            raise invalid(f"Metadata field {unsupported[0]} is not supported")
        model, definitions = self.tfserving.metadata(spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = model.name
        response.model_spec.version.value = model.version
        response.metadata["signature_def"].Pack(json_format.ParseDict(definitions, get_model_metadata_pb2.SignatureDefMap()))
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, tfserving: TFServing):
        self.tfserving = tfserving

    @failing_with_status
    async def GetModelStatus(self, request, context):
        status = self.tfserving.status(_spec(request))
        return json_format.ParseDict(status, get_model_status_pb2.GetModelStatusResponse())
