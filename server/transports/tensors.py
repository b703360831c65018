"""KServe v2 tensors <-> numpy: typed `contents` or little-endian raw bytes in,
raw bytes out."""

from __future__ import annotations

import math
import struct

import numpy as np

from ..pipeline.errors import invalid

NUMPY = {"UINT8": "<u1", "INT32": "<i4", "INT64": "<i8", "FP32": "<f4", "FP64": "<f8", "BOOL": "?"}
CONTENTS = {
    "UINT8": "uint_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BOOL": "bool_contents",
    "BYTES": "bytes_contents",
}
MAX_DIMENSION = 2**31 - 1
# Typed contents are converted value by value (about 0.1 us each, measured): up to this
# many per request on the event loop, up to MAX_TYPED_VALUES on the pool, none beyond.
INLINE_TYPED_VALUES = 4096
MAX_TYPED_VALUES = 1 << 20
DATATYPE = {np.dtype("uint8"): "UINT8", np.dtype("int32"): "INT32", np.dtype("float32"): "FP32"}


def _split_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    """Raw BYTES tensors are elements each preceded by its uint32 little-endian length."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise invalid(f"input {name!r}: truncated BYTES element length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise invalid(f"input {name!r}: BYTES element of {size} bytes runs past the tensor's end")
        elements.append(raw[offset : offset + size])
        offset += size
    if len(elements) != count:
        raise invalid(f"input {name!r} has {len(elements)} BYTES elements; its shape says {count}")
    return elements


def typed_values(request) -> int:
    """How many values the request's typed `contents` carry (counting is free)."""
    return sum(len(getattr(t.contents, field)) for t in request.inputs for field in CONTENTS.values())


def decode_inputs(request) -> dict:
    """{name: ndarray, or a list of bytes for BYTES}, checked against datatypes and shapes."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    typed = typed_values(request)
    if typed > MAX_TYPED_VALUES:
        raise invalid(
            f"the request's typed contents carry {typed} values, over the {MAX_TYPED_VALUES} this server converts: "
            "send tensors as raw_input_contents (tritonclient does by default) or images as image_bytes"
        )
    tensors = {}
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
        if name in tensors:
            raise invalid(f"input {name!r} appears twice")
        if datatype not in CONTENTS:
            raise invalid(f"input {name!r} has unsupported datatype {datatype!r}")
        if any(d < 1 or d > MAX_DIMENSION for d in shape):
            raise invalid(f"input {name!r} has shape {list(shape)}; dimensions run from 1 to {MAX_DIMENSION}")
        count = math.prod(shape)  # Python ints: numpy's would overflow on hostile shapes
        if datatype == "BYTES":
            tensors[name] = _split_bytes(raw[i], count, name) if raw else list(tensor.contents.bytes_contents)
            if len(tensors[name]) != count:
                raise invalid(f"input {name!r} has {len(tensors[name])} elements; its shape says {count}")
            continue
        dtype = np.dtype(NUMPY[datatype])
        if raw:
            if len(raw[i]) != count * dtype.itemsize:
                raise invalid(f"input {name!r}: {len(raw[i])} bytes for {datatype} {list(shape)}, which needs {count * dtype.itemsize}")
            array = np.frombuffer(raw[i], dtype)
        else:
            values = getattr(tensor.contents, CONTENTS[datatype])
            if len(values) != count:
                raise invalid(f"input {name!r} has {len(values)} values; {datatype} {list(shape)} needs {count}")
            wide = {"FP32": np.float64, "FP64": np.float64, "BOOL": np.bool_}.get(datatype, np.int64)
            array = np.fromiter(values, wide, len(values))
            if datatype == "UINT8" and array.size and array.max() > 255:
                raise invalid(f"input {name!r}: UINT8 values above 255")
            array = array.astype(dtype)
        tensors[name] = array.reshape(shape)
    return tensors


def encode_output(tensor, array: np.ndarray) -> bytes:
    """Fills the output tensor's name/datatype/shape; returns its raw little-endian bytes."""
    array = np.ascontiguousarray(array)
    tensor.datatype = DATATYPE[array.dtype]
    tensor.shape.extend(array.shape)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
