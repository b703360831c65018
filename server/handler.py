"""One explain request, top to bottom: model -> options -> bytes to pixels
(thread pool) -> batch -> response. Everything a caller can get wrong is
checked before the request joins a batch."""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import Executor
from dataclasses import dataclass

import grpc
import numpy as np

from camserve import colors, geometry
from camserve.v1 import camserve_pb2 as pb

from .batcher import PREDICT, Item, Result
from .decode import decode_encoded, decode_raw
from .headers import image_size, sniff
from .errors import RequestError, invalid
from .models import Registry, ServedModel
from .options import Limits

DEFAULT_TOP_K = 5


@dataclass
class Prepared:
    model: ServedModel
    targets: list[tuple[int, int]]  # (class_index, method code) per map: one, or top_k_maps
    method: int  # the method's index, or PREDICT
    top_k: int


def check_targets(
    model: ServedModel, class_index: list[int], method: list[int], counterfactual: list[bool] | None = None, layer: list[int] | None = None
) -> list[int]:
    """Per-image class indices (-r: the r-th highest class), method indices,
    counterfactual flags and layer choices (an index into layers + fusions), for
    every API (Python ints: numpy on a few values costs more than the check);
    returns the method codes the export takes (export/explainer.py)."""
    lowest = -model.num_classes if model.class_ranks else -1
    if any(not lowest <= c < model.num_classes for c in class_index):
        if not model.class_ranks and any(c < -1 for c in class_index):
            raise invalid(f"{model.name} version {model.version} was exported before class ranks (class_index < -1, top_k_maps): re-export it")
        ranks = f"-1..-{model.num_classes}: the highest class, the next, ..." if model.class_ranks else "-1: top-1"
        raise invalid(f"class_index out of range for {model.num_classes} classes ({ranks}): {class_index}")
    if any(not 0 <= m < len(model.methods) for m in method):
        raise invalid(f"method codes are 0..{len(model.methods) - 1} ({', '.join(model.methods)}): {method}")
    asked = method  # method indices, before layer codes are added
    if layer and any(layer):
        choices = [*model.layers, *model.fusions]
        if any(not 0 <= each < len(choices) for each in layer):
            raise invalid(f"layer codes are 0..{len(choices) - 1} ({', '.join(choices)}): {layer}")
        if chosen := {model.methods[m] for m, each in zip(asked, layer) if each} & model.attention_methods:
            raise invalid(f"{', '.join(sorted(chosen))} explain the whole model, not a layer: leave the layer out")
        method = [m + model.layer_code * each for m, each in zip(method, layer)]
    if not counterfactual or not any(counterfactual):
        return method
    if model.counterfactual_code is None:
        raise invalid(f"{model.name} version {model.version} was exported before counterfactual maps: re-export it")
    if chosen := {model.methods[m] for m, flag in zip(asked, counterfactual) if flag} & model.class_free_methods:
        raise invalid(f"{', '.join(sorted(chosen))} uses no gradient, so it has no counterfactual map")
    return [m + model.counterfactual_code if flag else m for m, flag in zip(method, counterfactual)]


def _options(request: pb.ExplainRequest, model: ServedModel, limits: Limits) -> Prepared:
    method_name = request.method or model.default_method
    if method_name not in model.methods:
        why = model.unavailable_methods.get(method_name)
        because = f"{model.name} does not offer {method_name!r}: {why}" if why else f"unknown method {method_name!r}"
        raise invalid(f"{because}; {model.name} offers {', '.join(model.methods)}")
    method = model.methods.index(method_name)
    maps = request.top_k_maps
    if maps > 1 and request.HasField("class_index"):
        raise invalid("top_k_maps explains the highest classes: leave class_index unset")
    if maps > model.num_classes:
        raise invalid(f"top_k_maps {maps} is more than the model's {model.num_classes} classes")
    if maps > model.batcher.options.max_enqueued:  # it could never be admitted: retrying would not help
        raise invalid(f"top_k_maps {maps} needs {maps} places in the queue; {model.name} admits {model.batcher.options.max_enqueued} (max_enqueued)")
    if request.heatmap_type == pb.HEATMAP_NONE and (maps > 1 or request.counterfactual):
        raise invalid("a predict-only request (heatmap type NONE) has no map for top_k_maps or counterfactual")
    classes = [-rank for rank in range(1, maps + 1)] if maps > 1 else [request.class_index if request.HasField("class_index") else -1]
    choices = [*model.layers, *model.fusions]
    if request.layer and request.layer not in choices:
        raise invalid(f"unknown layer {request.layer!r}; {model.name} offers {', '.join(choices)}")
    layer = choices.index(request.layer) if request.layer else 0
    n = len(classes)
    codes = check_targets(model, classes, [method] * n, [request.counterfactual] * n, [layer] * n)
    if request.resize not in (geometry.STRETCH, geometry.CENTER_CROP, geometry.LETTERBOX):
        raise invalid(f"unknown resize mode {request.resize}")
    if request.heatmap_type not in (pb.HEATMAP_FLOAT32, pb.HEATMAP_UINT8, pb.HEATMAP_NONE):
        raise invalid(f"unknown heatmap type {request.heatmap_type}")
    if request.heatmap_type == pb.HEATMAP_NONE:
        method, codes = PREDICT, [PREDICT]
    if request.HasField("background") and request.background > colors.WHITE:
        raise invalid(f"background {request.background:#x} is not a colour 0xRRGGBB")
    top_k = min(request.top_k or DEFAULT_TOP_K, model.num_classes)
    prepared = Prepared(model, list(zip(classes, codes)), method, top_k)
    if method != PREDICT and not request.heatmap_original_size:
        check_response_size(request, prepared, model.map_size[0] * model.map_size[1], limits.max_response_bytes)
    return prepared


def _pixels(request: pb.ExplainRequest, prepared: Prepared, limits: Limits) -> np.ndarray:
    image = request.image
    background = request.background if request.HasField("background") else limits.background
    kind = image.WhichOneof("data")
    if kind == "encoded":
        pixels = decode_encoded(image.encoded, limits.max_pixels, background)
    elif kind == "raw":
        raw = image.raw
        pixels = decode_raw(raw.pixels, raw.height, raw.width, raw.channels, limits.max_pixels, background)
    else:
        raise invalid("image is empty: set image.encoded or image.raw")
    if request.heatmap_original_size and prepared.method != PREDICT:
        check_response_size(request, prepared, pixels.shape[0] * pixels.shape[1], limits.max_response_bytes)
    return pixels


# Images whose decoding and fitting cost less than a hop to the decode pool and back: up
# to this many times the model's input pixels, as the header declares them (a 4 KB PNG
# may inflate to 36 megapixels), and for an encoded image at most this many bytes.
INLINE_MODEL_SIZES = 4
INLINE_BYTES = 16 * 1024


def raw_is_cheap(height: int, width: int, model: ServedModel) -> bool:
    return height * width <= INLINE_MODEL_SIZES * model.height * model.width


def encoded_is_cheap(data: bytes, model: ServedModel) -> bool:
    """Small, and declaring few pixels; or so malformed that decode_encoded refuses it
    before any work."""
    if len(data) > INLINE_BYTES:
        return False
    kind = sniff(data)
    size = image_size(data, kind) if kind else None
    return size is None or raw_is_cheap(size[1], size[0], model)


def _cheap(image: pb.Image, model: ServedModel) -> bool:
    if image.WhichOneof("data") == "raw":
        return raw_is_cheap(image.raw.height, image.raw.width, model)
    return encoded_is_cheap(image.encoded, model)


def fit(pixels, model: ServedModel, resize: int = geometry.STRETCH):
    """Decode and fit, on the decode pool, for every API: pixels() -> (canvas at the
    model's size, (the region it covers, the decoded image's height and width))."""
    image = pixels()
    canvas, region = geometry.fit(image, model.height, model.width, resize)
    return canvas, (region, image.shape[:2])


def _heatmap(request: pb.ExplainRequest, outputs: dict, region: geometry.Region, original) -> pb.Heatmap:
    values = outputs["heatmap"]
    if request.heatmap_original_size:
        values = geometry.heatmap_to_image(values, region, original[1], original[0])
        region = geometry.Region(0.0, 0.0, float(original[1]), float(original[0]))
    if request.heatmap_type == pb.HEATMAP_UINT8:
        data = np.round(values * 255).astype(np.uint8).tobytes()
    else:
        data = values.astype("<f4").tobytes()
    return pb.Heatmap(
        height=values.shape[0],
        width=values.shape[1],
        type=request.heatmap_type,
        data=data,
        scale=float(outputs["heatmap_scale"]),
        region=pb.Region(x0=region.x0, y0=region.y0, x1=region.x1, y1=region.y1),
    )


def _class(model: ServedModel, outputs: dict, index: int) -> pb.Class:
    return pb.Class(
        index=index,
        label=model.classes[index] if model.classes and index >= 0 else "",
        probability=float(outputs["probabilities"][index]) if index >= 0 else 0.0,
        logit=float(outputs["logits"][index]) if index >= 0 else 0.0,
    )


def build_response(request, prepared: Prepared, results: list[Result], region, original, received: float) -> pb.ExplainResponse:
    """The first result answers; with top_k_maps every result adds a class map."""
    model, result = prepared.model, results[0]
    outputs = result.outputs
    order = np.argsort(-outputs["probabilities"], kind="stable")[: prepared.top_k]
    response = pb.ExplainResponse(
        id=request.id,
        model=model.name,
        version=model.version,
        explained=_class(model, outputs, int(outputs["class_index"])),
        top_k=[_class(model, outputs, int(i)) for i in order],
        method=model.methods[prepared.method] if prepared.method != PREDICT else "",
        image_height=original[0],
        image_width=original[1],
        timing=pb.Timing(
            queue_ms=result.queue_s * 1e3,
            compute_ms=result.compute_s * 1e3,
            batch_size=result.batch_size,
            total_ms=(time.monotonic() - received) * 1e3,
        ),
    )
    if prepared.method != PREDICT:
        response.heatmap.CopyFrom(_heatmap(request, outputs, region, original))
    if len(results) > 1:
        for each in results:
            entry = response.maps.add(explained=_class(model, each.outputs, int(each.outputs["class_index"])))
            entry.heatmap.CopyFrom(response.heatmap if each is result else _heatmap(request, each.outputs, region, original))
    if request.return_scores:
        response.logits.extend(outputs["logits"].tolist())
        response.probabilities.extend(outputs["probabilities"].tolist())
    return response


# The caller's deadline runs from when it sent the call, ours from when it arrived, so
# a caller hanging up at its deadline reaches us with a little of ours left (measured:
# up to 0.4 ms on loopback under load).
DEADLINE_SLACK_S = 0.02


class Accounted:
    """One call, counted by outcome when it ends; its handler fills in the model and
    the queue time. A plain class: a generator context manager per call cost a
    tenth of a KServe call's time on the event loop (benchmarks/README.md)."""

    __slots__ = ("handler", "api", "context", "received", "model", "queue_s")

    def __init__(self, handler: Handler, api: str, context):
        self.handler, self.api, self.context = handler, api, context
        self.received, self.model, self.queue_s = time.monotonic(), None, None

    def __enter__(self) -> Accounted:
        self.handler._started()
        return self

    def __exit__(self, kind, err, trace):
        if kind is None:
            code = grpc.StatusCode.OK
        elif isinstance(err, RequestError):
            code = err.code
        elif isinstance(err, asyncio.CancelledError):
            remaining = self.context.time_remaining() if self.context is not None else None
            expired = remaining is not None and remaining <= DEADLINE_SLACK_S
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        else:
            code = grpc.StatusCode.INTERNAL
        self.handler._finished(self, code)
        return False


class Handler:
    def __init__(self, registry: Registry, executor: Executor, limits: Limits, metrics=None):
        self.registry = registry
        self.executor = executor
        self.limits = limits
        self.metrics = metrics
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self):
        """Once no call is in flight."""
        await self._idle.wait()

    def accounted(self, api: str, context=None) -> Accounted:
        """Counts the call in the metrics and its model's statistics, by outcome (a
        call gRPC cancels at its deadline counts as DEADLINE_EXCEEDED)."""
        return Accounted(self, api, context)

    def _started(self):
        self.in_flight += 1
        self._idle.clear()
        if self.metrics:
            self.metrics.in_flight.set(self.in_flight)

    def _finished(self, call: Accounted, code: grpc.StatusCode):
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()
        seconds = time.monotonic() - call.received
        if self.metrics:
            self.metrics.in_flight.set(self.in_flight)
            # Only served names become metric labels: callers' typos must not grow the label set.
            self.metrics.finished(call.model.name if call.model else "unknown", call.api, code.name, seconds, call.queue_s)
        if call.model:
            call.model.stats.request(code == grpc.StatusCode.OK, seconds, call.queue_s)

    async def run_image(
        self, model: ServedModel, admission, prepare, inline: bool, targets: list[tuple[int, int]], deadline: float | None
    ):
        """For an image admitted to the model's batcher once per target: prepare() ->
        (canvas, extra) runs on the decode pool while the model may be busy, or right
        here when it is cheap (`inline`: the thread hop would cost more than the
        work); then the canvas joins a batch once per (class_index, method code).
        Returns ([Result per target], extra)."""
        loop = asyncio.get_running_loop()
        try:
            canvas, extra = prepare() if inline else await self.on_pool(prepare)
        finally:
            for _ in targets:
                admission.decoded()
        futures = []
        for class_index, method in targets:
            futures.append(loop.create_future())
            model.batcher.submit(Item(canvas, class_index, method, deadline, futures[-1]))
        if len(futures) == 1:
            return [await _by(deadline, futures[0])], extra
        return await all_or_none([_by(deadline, future) for future in futures]), extra

    async def on_pool(self, work):
        """work() on the decode pool. Cancelled, work that has not started leaves the
        pool's queue; work that has started runs to its end before the cancellation
        goes on, so the call (and its admission) counts it until it really ends."""
        job = self.executor.submit(work)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if not job.cancel():
                await asyncio.wait([asyncio.wrap_future(job)])
            raise

    async def explain(self, request: pb.ExplainRequest, context, api: str, render=None):
        """The response; or with `render` (explain by upload), render(response), run on
        the decode pool inside the call, so that its work is counted and drained."""
        received = time.monotonic()
        with self.accounted(api, context) as call:
            prepared = _options(request, self.registry.get(request.model, request.version), self.limits)
            call.model = model = prepared.model
            with model.batcher.admit(len(prepared.targets)) as admission:
                results, (region, original) = await self.run_image(
                    model,
                    admission,
                    functools.partial(fit, functools.partial(_pixels, request, prepared, self.limits), model, request.resize),
                    _cheap(request.image, model),
                    prepared.targets,
                    deadline(context, received, request.timeout_ms, self.limits.default_timeout_s),
                )
            call.queue_s = max(result.queue_s for result in results)
            build = functools.partial(build_response, request, prepared, results, region, original, received)
            if render is not None:
                return await self.on_pool(lambda: render(build()))
            if request.heatmap_original_size and prepared.method != PREDICT:  # resizing a map to a large image is real work
                return await self.on_pool(build)
            return build()


async def all_or_none(work: list) -> list:
    """The results of `work` (awaitables), or the first failure once the rest have
    been cancelled and have ended: a request's images never outlive the request."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(each) for each in work]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


RESPONSE_OVERHEAD = 64 * 1024  # everything in a response but the heatmaps and scores, generously


def check_response_size(request: pb.ExplainRequest, prepared: Prepared, map_pixels: int, limit: int):
    """Refuses, before any work, an answer gRPC could not send: every map it carries
    (with top_k_maps, one per class beside the answer's own) and its scores."""
    targets = len(prepared.targets)
    maps = targets + 1 if targets > 1 else 1
    size = maps * map_pixels * (1 if request.heatmap_type == pb.HEATMAP_UINT8 else 4) + RESPONSE_OVERHEAD
    if request.return_scores:
        size += 2 * 4 * prepared.model.num_classes
    if size <= limit:
        return
    where = "at the image's original size" if request.heatmap_original_size else "at feature resolution"
    raise invalid(
        f"{maps} heatmap(s) {where} would make a {size / 2**20:.1f} MB response, over the {limit / 2**20:.1f} MB "
        "message limit: ask for fewer top_k_maps, heatmap_type uint8, a smaller image, or the map at feature "
        "resolution (heatmap_at() resizes it on the client)"
    )


def deadline(context, received: float, timeout_ms: float = 0, default_s: float = 0) -> float | None:
    """The earlier of the call's deadline and the request's own timeout_ms (a
    stream's images have no other), on the time.monotonic() clock; for a call
    that brings neither, `default_s` (--default-timeout-s; 0: none)."""
    remaining = context.time_remaining() if context is not None else None
    ends = [received + remaining] if remaining is not None else []
    if timeout_ms:
        ends.append(received + timeout_ms / 1e3)
    if not ends and default_s:
        ends.append(received + default_s)
    return min(ends, default=None)


async def _by(deadline: float | None, future: asyncio.Future):
    """The batcher drops an expired request when it forms the next batch; this
    answers at the deadline itself, even while an earlier batch still runs. A
    unary call is cut there by gRPC anyway; a stream's image is not."""
    if deadline is None:
        return await future
    try:
        return await asyncio.wait_for(future, deadline - time.monotonic())
    except TimeoutError:
        raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed before the image was explained") from None
