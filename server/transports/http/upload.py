"""Explain by upload, for curl and for the page: POST an encoded image (the raw
body, or the first file of a multipart form) to
`/camserve/models/{model}[/versions/{version}]/explain` with options as query
parameters; the answer is JSON (top-k, the explained class, the map and its
box) or, with `format=overlay`, the overlay PNG itself. `GET /camserve/models`
lists what is served, as ListModels does.

The query becomes the pipeline's ExplainOptions and the answer is drawn from
the pipeline's Explained, with the same drawing code (camserve/boxes.py,
overlay.py) as `camserve explain`. The map is rendered once, inside the call (counted, drained, on the decode pool),
at the image's size scaled down to at most RENDER_PIXELS: the PNG map, the
overlay and the box all come from that one rendering."""

from __future__ import annotations

import base64
import time

import cv2
import numpy as np
from aiohttp import web

from camserve import boxes, colors, geometry, images, overlay

from ...models.registry import Registry, version_number
from ...pipeline.batcher import PREDICT
from ...pipeline.errors import invalid
from ...pipeline.explain import Explained, Pipeline
from ...pipeline.images import Encoded
from ...pipeline.targets import FLOAT32, NONE, ExplainOptions
from .. import native
from .kserve import as_json

HEATMAPS = ("png", "uint8", "float16", "none")
RESIZE_MODES = {"stretch": geometry.STRETCH, "center_crop": geometry.CENTER_CROP, "letterbox": geometry.LETTERBOX}
RENDER_PIXELS = 4_000_000  # a bound on what one upload renders: 2000 x 2000 pixels, 16 MB of map
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
OPTIONS = {
    "method", "class_index", "layer", "counterfactual", "top_k", "resize", "background", "timeout_ms",
    "heatmap", "size", "format", "opacity", "colormap", "box",
}


def _number(query, name: str, kind, default, low=None, high=None):
    if name not in query:
        return default
    try:
        value = kind(query[name])
    except ValueError:
        raise invalid(f"query parameter {name}={query[name]!r} is not a{'n integer' if kind is int else ' number'}") from None
    if value != value or (low is not None and value < low) or (high is not None and value > high):  # NaN is in no range
        raise invalid(f"query parameter {name}={value} is outside {low}..{high}")
    return value


def _choice(query, name: str, choices, default: str) -> str:
    value = query.get(name, default)
    if value not in choices:
        raise invalid(f"query parameter {name}={value!r}: one of {', '.join(choices)}")
    return value


def _flag(query, name: str) -> bool:
    value = query.get(name, "").lower()
    if value not in TRUE + FALSE:
        raise invalid(f"query parameter {name}={value!r} is not a yes/no value")
    return value in TRUE


class Options:
    """The query parameters, all checked before the image is read."""

    def __init__(self, query):
        unknown = sorted(set(query) - OPTIONS)
        if unknown:
            raise invalid(f"unknown query parameter(s) {unknown}; known: {', '.join(sorted(OPTIONS))}")
        self.heatmap = _choice(query, "heatmap", HEATMAPS, "png")
        self.overlay = _choice(query, "format", ("json", "overlay"), "json") == "overlay"
        if self.overlay and self.heatmap == "none":
            raise invalid("an overlay needs a heatmap: leave heatmap unset")
        # A PNG or an overlay is for looking at: the image's own size. Numbers stay at
        # the model's feature size unless asked, as on gRPC.
        self.original = _choice(query, "size", ("feature", "original"), "original" if self.heatmap == "png" else "feature") == "original"
        self.opacity = _number(query, "opacity", float, overlay.DEFAULT_ALPHA, 0.0, 1.0)
        self.box = _number(query, "box", float, boxes.THRESHOLD, 0.0, 1.0)  # 0: no box
        self.colormap = query.get("colormap", "jet")
        try:
            overlay.colormap(self.colormap)  # known to OpenCV, or ValueError
            background = colors.rgb(query["background"]) if "background" in query else None
        except ValueError as err:  # an unknown colormap or a background that is no colour
            raise invalid(str(err)) from None
        # The map travels at the model's feature size; rendering sizes it to the image.
        self.explain = ExplainOptions(
            method=query.get("method", ""),
            class_index=_number(query, "class_index", int, None, -(2**31), 2**31 - 1),
            top_k=_number(query, "top_k", int, 5, 1, 1000),
            heatmap=NONE if self.heatmap == "none" else FLOAT32,
            resize=RESIZE_MODES[_choice(query, "resize", tuple(RESIZE_MODES), "stretch")],
            timeout_ms=_number(query, "timeout_ms", int, 0, 0, 2**32 - 1),
            background=background,
            counterfactual=_flag(query, "counterfactual"),
            layer=query.get("layer", ""),
        )


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def render_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the image scaled down, aspect kept, to at most RENDER_PIXELS."""
    shrink = min(1.0, (RENDER_PIXELS / (height * width)) ** 0.5)
    return max(1, int(height * shrink)), max(1, int(width * shrink))


def _encoded_map(found: Explained, options: Options, rendered: np.ndarray | None) -> dict:
    height, width = found.image_size
    result = found.results[0]
    values = rendered if options.original else result.outputs["heatmap"]
    if options.heatmap == "png":
        data = _png(overlay.colorize(values, options.colormap))
    elif options.heatmap == "uint8":
        data = overlay.levels(values).tobytes()
    else:
        data = values.astype("<f2").tobytes()
    # Where the map lies on the image (pixels x0, y0, x1, y1); an original-size map covers it all.
    region = geometry.Region(0.0, 0.0, float(width), float(height)) if options.original else found.region
    return {
        "encoding": options.heatmap,
        "height": int(values.shape[0]),
        "width": int(values.shape[1]),
        "scale": float(result.outputs["heatmap_scale"]),
        "region": [region.x0, region.y0, region.x1, region.y1],
        "data": base64.b64encode(data).decode(),
    }


def _class(found: Explained, index: int, logit: bool = True) -> dict:
    """A class as the JSON answer names it; index -1 (a class out of range): none."""
    model, outputs = found.model, found.results[0].outputs
    known = index >= 0
    named = {
        "index": index,
        "label": model.classes[index] if model.classes and known else "",
        "probability": float(outputs["probabilities"][index]) if known else 0.0,
    }
    if logit:
        named["logit"] = float(outputs["logits"][index]) if known else 0.0
    return named


def _scaled(box: boxes.Box, to: tuple[int, int], source: tuple[int, int]) -> boxes.Box:
    """A box on an image of `source` (height, width) on the same image at `to`."""
    sy, sx = to[0] / source[0], to[1] / source[1]
    return boxes.Box(int(box.x0 * sx), int(box.y0 * sy), min(to[1], round(box.x1 * sx)), min(to[0], round(box.y1 * sy)))


def render(found: Explained, options: Options, image: bytes, background: int) -> web.Response:
    """The answer, on the decode pool: resizing a map to a photo and encoding PNGs is real work."""
    image_size = found.image_size
    height, width = render_size(*image_size)
    result = found.results[0]
    has_map = found.prepared.method != PREDICT
    wanted = has_map and (options.overlay or options.original or options.box > 0)
    sx, sy = width / image_size[1], height / image_size[0]
    rendered = geometry.heatmap_to_image(result.outputs["heatmap"], found.region.scaled(sx, sy), width, height) if wanted else None
    drawn_box = boxes.largest_region(rendered, options.box) if rendered is not None and options.box > 0 else None
    box = _scaled(drawn_box, image_size, (height, width)) if drawn_box else None
    if options.overlay:
        # Decoded again: the pipeline keeps only the model-sized canvas of a waiting
        # request (README, memory), not the image.
        pixels = cv2.resize(images.to_rgb(images.decode(image), background), (width, height), interpolation=cv2.INTER_AREA)
        drawn = overlay.blend(pixels, rendered, options.colormap, options.opacity)
        if drawn_box:
            drawn = boxes.draw(drawn, drawn_box)
        return web.Response(body=_png(drawn), content_type="image/png")
    outputs = result.outputs
    document = {
        "model": found.model.name,
        "version": found.model.version,
        "method": found.model.methods[found.prepared.method] if has_map else "",
        "image": {"height": image_size[0], "width": image_size[1]},
        "explained": _class(found, int(outputs["class_index"]), logit=False),
        "top_k": [_class(found, int(i)) for i in found.top_k()],
        "heatmap": _encoded_map(found, options, rendered) if has_map else None,
        "box": {"x0": box.x0, "y0": box.y0, "x1": box.x1, "y1": box.y1} if box else None,
        "timing": {
            "queue_ms": result.queue_s * 1e3,
            "compute_ms": result.compute_s * 1e3,
            "batch_size": result.batch_size,
            "total_ms": (time.monotonic() - found.received) * 1e3,
        },
    }
    return web.json_response(document)


async def _image(request: web.Request) -> bytes:
    """The raw body, or the first file of a multipart form. Both are read by aiohttp
    within the message limit (413 beyond); a form's files go to temporary files."""
    if request.content_type.startswith("multipart/"):
        try:
            form = await request.post()
        except (ValueError, LookupError) as err:  # aiohttp's words for a malformed form (UnicodeDecodeError is a ValueError)
            raise invalid(f"the multipart form is malformed: {err}") from None
        for field in form.values():
            if isinstance(field, web.FileField):
                return field.file.read()
        raise invalid("the multipart form carries no file: send the image as a file field")
    return await request.read()


def routes(registry: Registry, pipeline: Pipeline) -> list[web.RouteDef]:
    async def list_models(request):
        return web.json_response(as_json(native.list_models(registry)))

    async def explain(request):
        version = version_number(request.match_info.get("version", ""))
        options = Options(request.query)
        image = await _image(request)  # aiohttp refuses a body over the message limit (413)
        if not image:
            raise invalid("no image: send it as the request body or a multipart file")
        background = pipeline.limits.background if options.explain.background is None else options.explain.background
        return await pipeline.explain(
            request.match_info["model"], version, Encoded(image), options.explain, None, "http",
            lambda found: render(found, options, image, background), heavy=True,
        )

    return [
        web.get("/camserve/models", list_models),
        web.post("/camserve/models/{model}/explain", explain),
        web.post("/camserve/models/{model}/versions/{version}/explain", explain),
    ]
