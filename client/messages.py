"""Requests from what callers hold (paths, encoded bytes, numpy arrays) and
Explanations from responses; shared by the blocking and the asyncio client."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import numpy as np

from camserve import boxes, colors, geometry, images
from camserve import overlay as drawing
from camserve.v1 import camserve_pb2 as pb

RESIZE_MODES = {"stretch": pb.RESIZE_STRETCH, "center_crop": pb.RESIZE_CENTER_CROP, "letterbox": pb.RESIZE_LETTERBOX}
HEATMAP_TYPES = {"float32": pb.HEATMAP_FLOAT32, "uint8": pb.HEATMAP_UINT8, "none": pb.HEATMAP_NONE}


def image_message(image) -> pb.Image:
    """A path, encoded bytes, or a uint8 array [H,W], [H,W,1|2|3|4] in RGB(A) order."""
    if isinstance(image, (str, Path)):
        return pb.Image(encoded=Path(image).read_bytes())
    if isinstance(image, (bytes, bytearray, memoryview)):
        return pb.Image(encoded=bytes(image))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"pixel arrays must be uint8, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"expected [H,W] or [H,W,C] pixels, got shape {array.shape}")
    height, width, channels = array.shape
    return pb.Image(raw=pb.RawImage(pixels=np.ascontiguousarray(array).tobytes(), height=height, width=width, channels=channels))


def request_options(
    *,
    model=None,
    version=0,
    class_index=None,
    method=None,
    top_k=5,
    heatmap_type="float32",
    original_size=False,
    resize="stretch",
    return_scores=False,
    timeout=None,
    background=None,
    counterfactual=False,
    top_k_maps=0,
    layer=None,
) -> pb.ExplainRequest:
    """An ExplainRequest with everything but its image and id, checked once for a
    whole stream; `timeout` (seconds) becomes the image's own timeout_ms;
    `background` (0xRRGGBB or (r, g, b); default: the server's) lies under
    transparent pixels."""
    request = pb.ExplainRequest(
        model=model or "",
        version=version,
        method=method or "",  # empty: the model's default method
        top_k=top_k,
        heatmap_type=HEATMAP_TYPES[heatmap_type],
        heatmap_original_size=original_size,
        resize=RESIZE_MODES[resize],
        return_scores=return_scores,
        counterfactual=counterfactual,
        top_k_maps=top_k_maps,
        layer=layer or "",
    )
    if class_index is not None:
        request.class_index = class_index
    if timeout:
        request.timeout_ms = min(max(1, math.ceil(timeout * 1e3)), 2**32 - 1)
    if background is not None:
        request.background = colors.rgb(background)
    return request


def request_message(image, options: pb.ExplainRequest, request_id: str = "") -> pb.ExplainRequest:
    request = pb.ExplainRequest(id=request_id, image=image_message(image))
    request.MergeFrom(options)
    return request


@dataclass
class Prediction:
    index: int
    label: str
    probability: float
    logit: float


@dataclass
class Explanation:
    id: str
    model: str = ""
    version: int = 0
    class_index: int = -1
    label: str = ""
    probability: float = 0.0  # of the explained class
    method: str = ""
    top_k: list[Prediction] = field(default_factory=list)
    logits: np.ndarray | None = None  # with return_scores
    probabilities: np.ndarray | None = None
    heatmap: np.ndarray | None = None  # float32 [h,w] in [0,1]; None from predict()
    heatmap_scale: float = 0.0
    region: geometry.Region | None = None  # where the map lies on the image as sent
    image_size: tuple[int, int] = (0, 0)  # (height, width) as sent
    batch_size: int = 0
    queue_ms: float = 0.0
    compute_ms: float = 0.0
    total_ms: float = 0.0
    # From explain_stream only: (status code name, message); the code is UNREADABLE
    # for a path the client could not read.
    error: tuple[str, str] | None = None
    index: int | None = None  # the position in the caller's iterable, from explain_stream
    # With top_k_maps > 1: an Explanation per class, highest first (this one is the first).
    maps: list[Explanation] = field(default_factory=list)

    def heatmap_at(self, width: int, height: int) -> np.ndarray:
        """The map over an image of width x height showing what was sent."""
        if self.heatmap is None:
            raise ValueError("this result has no heatmap: it was asked for without one (predict(), heatmap_type 'none')")
        sx, sy = width / self.image_size[1], height / self.image_size[0]
        return geometry.heatmap_to_image(self.heatmap, self.region.scaled(sx, sy), width, height)

    def box(self, threshold: float = boxes.THRESHOLD) -> boxes.Box | None:
        """Where the map says the object is, on the image as sent: the box around
        the largest connected region above `threshold` x the map's maximum (the
        Grad-CAM paper's localisation); None when the map is all zero."""
        return boxes.largest_region(self.heatmap_at(self.image_size[1], self.image_size[0]), threshold)

    def overlay(self, image, colormap: str = "jet", alpha: float = drawing.DEFAULT_ALPHA, background=colors.WHITE) -> np.ndarray:
        """RGB uint8 image with the heatmap blended over it; `image` is gray or
        RGB(A) pixels, alpha composited onto `background` (as in request_options)."""
        image = images.to_rgb(np.asarray(image, np.uint8), colors.rgb(background), bgr=False)
        heatmap = self.heatmap_at(image.shape[1], image.shape[0])
        return drawing.blend(image, heatmap, colormap, alpha)


def _prediction(c: pb.Class) -> Prediction:
    return Prediction(c.index, c.label, c.probability, c.logit)


def explanation(response: pb.ExplainResponse, index: int | None = None) -> Explanation:
    if response.HasField("error"):
        code = next((c.name for c in grpc.StatusCode if c.value[0] == response.error.code), str(response.error.code))
        return Explanation(id=response.id, error=(code, response.error.message), index=index)
    hm = response.heatmap
    values = _values(hm) if response.HasField("heatmap") else None  # none: predict-only
    found = Explanation(
        id=response.id,
        model=response.model,
        version=response.version,
        class_index=response.explained.index,
        label=response.explained.label,
        probability=response.explained.probability,
        method=response.method,
        top_k=[_prediction(c) for c in response.top_k],
        logits=np.array(response.logits, np.float32) if response.logits else None,
        probabilities=np.array(response.probabilities, np.float32) if response.probabilities else None,
        heatmap=values,
        heatmap_scale=hm.scale,
        region=geometry.Region(hm.region.x0, hm.region.y0, hm.region.x1, hm.region.y1),
        image_size=(response.image_height, response.image_width),
        batch_size=response.timing.batch_size,
        queue_ms=response.timing.queue_ms,
        compute_ms=response.timing.compute_ms,
        total_ms=response.timing.total_ms,
        index=index,
    )
    found.maps = [
        replace(found, class_index=m.explained.index, label=m.explained.label, probability=m.explained.probability,
                heatmap=_values(m.heatmap), heatmap_scale=m.heatmap.scale, maps=[])
        for m in response.maps
    ]
    return found


def _values(hm: pb.Heatmap) -> np.ndarray:
    if hm.type == pb.HEATMAP_UINT8:
        return np.frombuffer(hm.data, np.uint8).reshape(hm.height, hm.width).astype(np.float32) / 255.0
    return np.frombuffer(hm.data, "<f4").reshape(hm.height, hm.width).astype(np.float32)
