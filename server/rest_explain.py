"""Explain by upload, for curl and for the page: POST an encoded image (the raw
body, or the first file of a multipart form) to
`/camserve/models/{model}[/versions/{version}]/explain` with options as query
parameters; the answer is JSON (top-k, the explained class, the map and its
box) or, with `format=overlay`, the overlay PNG itself. `GET /camserve/models`
lists what is served, as ListModels does.

The request becomes the native API's ExplainRequest and runs through the
handler's pipeline; the answer is read back with the client's own Explanation,
so boxes and overlays are drawn exactly as `camserve explain` draws them. The
map is rendered once, inside the call (counted, drained, on the decode pool),
at the image's size scaled down to at most RENDER_PIXELS: the PNG map, the
overlay and the box all come from that one rendering."""

from __future__ import annotations

import base64

import cv2
import numpy as np
from aiohttp import web

from camserve import geometry, images
from camserve.client import boxes, messages, overlay
from camserve.v1 import camserve_pb2 as pb

from . import kserve
from .context import Context
from .errors import invalid
from .rest_kserve import as_json

HEATMAPS = ("png", "uint8", "float16", "none")
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

    def __init__(self, query, model: str, version: int):
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
            self.request = messages.request_options(
                model=model,
                version=version,
                class_index=_number(query, "class_index", int, None, -(2**31), 2**31 - 1),
                method=query.get("method"),
                top_k=_number(query, "top_k", int, 5, 1, 1000),
                heatmap_type="none" if self.heatmap == "none" else "float32",
                resize=_choice(query, "resize", tuple(messages.RESIZE_MODES), "stretch"),
                timeout=_number(query, "timeout_ms", int, 0, 0, 2**32 - 1) / 1e3,
                background=query.get("background"),
                counterfactual=_flag(query, "counterfactual"),
                layer=query.get("layer"),
            )
        except ValueError as err:  # an unknown colormap or a background that is no colour
            raise invalid(str(err)) from None


def _png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def render_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the image scaled down, aspect kept, to at most RENDER_PIXELS."""
    shrink = min(1.0, (RENDER_PIXELS / (height * width)) ** 0.5)
    return max(1, int(height * shrink)), max(1, int(width * shrink))


def _encoded_map(found: messages.Explanation, options: Options, rendered: np.ndarray | None) -> dict:
    height, width = found.image_size
    values = rendered if options.original else found.heatmap
    if options.heatmap == "png":
        data = _png(overlay.colorize(values, options.colormap))
    elif options.heatmap == "uint8":
        data = np.round(values * 255).astype(np.uint8).tobytes()
    else:
        data = values.astype("<f2").tobytes()
    # Where the map lies on the image (pixels x0, y0, x1, y1); an original-size map covers it all.
    region = geometry.Region(0.0, 0.0, float(width), float(height)) if options.original else found.region
    return {
        "encoding": options.heatmap,
        "height": int(values.shape[0]),
        "width": int(values.shape[1]),
        "scale": found.heatmap_scale,
        "region": [region.x0, region.y0, region.x1, region.y1],
        "data": base64.b64encode(data).decode(),
    }


def _prediction(p: messages.Prediction) -> dict:
    return {"index": p.index, "label": p.label, "probability": p.probability, "logit": p.logit}


def _scaled(box: boxes.Box, to: tuple[int, int], source: tuple[int, int]) -> boxes.Box:
    """A box on an image of `source` (height, width) on the same image at `to`."""
    sy, sx = to[0] / source[0], to[1] / source[1]
    return boxes.Box(int(box.x0 * sx), int(box.y0 * sy), min(to[1], round(box.x1 * sx)), min(to[0], round(box.y1 * sy)))


def render(found: messages.Explanation, options: Options, image: bytes, background: int) -> web.Response:
    """The answer, on the decode pool: resizing a map to a photo and encoding PNGs is real work."""
    height, width = render_size(*found.image_size)
    wanted = found.heatmap is not None and (options.overlay or options.original or options.box > 0)
    rendered = found.heatmap_at(width, height) if wanted else None
    drawn_box = boxes.largest_region(rendered, options.box) if rendered is not None and options.box > 0 else None
    box = _scaled(drawn_box, found.image_size, (height, width)) if drawn_box else None
    if options.overlay:
        # Decoded again: the pipeline keeps only the model-sized canvas of a waiting
        # request (README, memory), not the image.
        pixels = cv2.resize(images.to_rgb(images.decode(image), background), (width, height), interpolation=cv2.INTER_AREA)
        drawn = overlay.blend(pixels, rendered, options.colormap, options.opacity)
        if drawn_box:
            drawn = boxes.draw(drawn, drawn_box)
        return web.Response(body=_png(drawn), content_type="image/png")
    document = {
        "model": found.model,
        "version": found.version,
        "method": found.method,
        "image": {"height": found.image_size[0], "width": found.image_size[1]},
        "explained": {"index": found.class_index, "label": found.label, "probability": found.probability},
        "top_k": [_prediction(p) for p in found.top_k],
        "heatmap": _encoded_map(found, options, rendered) if found.heatmap is not None else None,
        "box": {"x0": box.x0, "y0": box.y0, "x1": box.x1, "y1": box.y1} if box else None,
        "timing": {"queue_ms": found.queue_ms, "compute_ms": found.compute_ms, "batch_size": found.batch_size, "total_ms": found.total_ms},
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


def routes(service, handler) -> list[web.RouteDef]:
    """`service`: the CamServeService whose ListModels answers; `handler` runs explains."""

    async def list_models(request):
        return web.json_response(as_json(await service.ListModels(pb.ListModelsRequest(), Context())))

    async def explain(request):
        version = kserve.version_number(request.match_info.get("version", ""))
        options = Options(request.query, request.match_info["model"], version)
        image = await _image(request)  # aiohttp refuses a body over the message limit (413)
        if not image:
            raise invalid("no image: send it as the request body or a multipart file")
        message = messages.request_message(image, options.request)
        background = message.background if message.HasField("background") else handler.limits.background
        return await handler.explain(
            message, Context(), "http", render=lambda response: render(messages.explanation(response), options, image, background)
        )

    return [
        web.get("/camserve/models", list_models),
        web.post("/camserve/models/{model}/explain", explain),
        web.post("/camserve/models/{model}/versions/{version}/explain", explain),
    ]

