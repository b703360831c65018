"""A batch of images as the tensor APIs send it (KServe v2, TF Serving): `images`
(uint8 [N,H,W,C]) or `image_bytes` (N encoded images), and optional per-image
`class_index`, `method`, `counterfactual` and `layer`, checked against the model
before any decoding; or the model's own input tensor (export --input-contract
model) in their place."""

from __future__ import annotations

import functools

import numpy as np

from .errors import invalid
from .images import decode_encoded, decode_raw, encoded_is_cheap, fit, raw_is_cheap
from .limits import Limits
from .model import Model
from .targets import check_targets

INPUTS = ("images", "image_bytes", "class_index", "method", "counterfactual", "layer")


def _per_image(tensors: dict, name: str, n: int, default: int, kinds: str = "i") -> list[int]:
    if name not in tensors:
        return [default] * n
    values = tensors[name]
    if isinstance(values, list) or values.dtype.kind not in kinds:
        raise invalid(f"input {name!r} must be {' or '.join({'i': 'INT32', 'b': 'BOOL'}[k] for k in kinds)} [{n}]")
    if values.shape not in ((n,), (n, 1)):
        raise invalid(f"input {name!r} has shape {list(values.shape)}; expected [{n}], one per image")
    return values.reshape(n).tolist()


def image_batch(model: Model, tensors: dict, limits: Limits):
    """(images, class indices, method codes) from a call's tensors by name ({name:
    ndarray, or a list of bytes for a string tensor}), all validated; the images are
    an array [N,H,W,3] when already at the model's size, else [(prepare function,
    inline)] per image, for the decode pool."""
    if set(tensors) - set(INPUTS):
        raise invalid(f"unknown input(s) {sorted(set(tensors) - set(INPUTS))}; inputs are {', '.join(sorted(INPUTS))}")
    if ("images" in tensors) == ("image_bytes" in tensors):
        raise invalid("send exactly one of `images` (UINT8 [N,H,W,3]) and `image_bytes` (BYTES [N])")
    block = None
    if "images" in tensors:
        images = tensors["images"]
        if isinstance(images, list) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 2, 3, 4):
            raise invalid("input 'images' must be UINT8 [N,H,W,3] (1, 2 or 4 channels also accepted)")
        n, h, w, c = images.shape
        if (h, w, c) == (model.height, model.width, 3):  # already what the model takes: no decoding, one block
            block = images
        else:
            inline = n == 1 and raw_is_cheap(h, w, model)  # at most one image a request on the event loop
            pixels = [functools.partial(decode_raw, image.tobytes(), h, w, c, limits.max_pixels, limits.background) for image in images]
    else:
        blobs = tensors["image_bytes"]
        if not isinstance(blobs, list):
            raise invalid("input 'image_bytes' must be BYTES [N]")
        n = len(blobs)
        inline = n == 1 and encoded_is_cheap(blobs[0], model)  # at most one image a request on the event loop
        pixels = [functools.partial(decode_encoded, blob, limits.max_pixels, limits.background) for blob in blobs]
    class_index, method = _targets(model, tensors, n)
    if block is not None:
        return block, class_index, method
    return [(functools.partial(fit, p, model), inline) for p in pixels], class_index, method


def model_input_batch(model: Model, tensors: dict, name: str):
    """(the model's own input [N,H,W,C], class indices, method codes) for a model
    exported with its input contract (export --input-contract model): tensor `name`
    exactly as the model takes it, with the optional per-image inputs above (the
    caller has refused any other)."""
    contract = model.input_contract
    shape, dtype = tuple(contract["shape"]), np.dtype(contract["dtype"])
    x = tensors.get(name)
    if x is None:
        raise invalid(f"input {name!r} is missing: the model's input, {dtype.name} [N,{','.join(map(str, shape))}]")
    if isinstance(x, list) or x.dtype != dtype or x.shape[1:] != shape:
        got = "strings" if isinstance(x, list) else f"{x.dtype.name} {list(x.shape)}"
        raise invalid(f"input {name!r} is {got}; the model takes {dtype.name} [N,{','.join(map(str, shape))}]")
    return x, *_targets(model, tensors, len(x))


def _targets(model: Model, tensors: dict, n: int) -> tuple[list[int], list[int]]:
    """The batch's size checked, and its per-image class indices and method codes."""
    limit = model.batcher.options.max_enqueued
    if n == 0 or n > limit:
        raise invalid(f"a request carries 1 to {limit} images; this one has {n}")
    class_index = _per_image(tensors, "class_index", n, -1)
    method = _per_image(tensors, "method", n, model.methods.index(model.default_method))
    counterfactual = [bool(flag) for flag in _per_image(tensors, "counterfactual", n, 0, kinds="ib")]
    layer = _per_image(tensors, "layer", n, 0)
    return class_index, check_targets(model, class_index, method, counterfactual, layer)

