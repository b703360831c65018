"""One image, top to bottom, for every API: model -> options -> bytes to pixels
(decode pool) -> batch -> Explained, which each API turns into its wire format.
Everything a caller can get wrong is checked before the image joins a batch."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import grpc
import numpy as np

from camserve import geometry

from .batcher import IMAGES, PREDICT, Item, Result
from .calls import Calls
from .deadlines import all_or_none, by, deadline, of_the_call
from .errors import RequestError, as_request_error
from .images import Encoded, Raw, decode, fit, is_cheap
from .limits import Limits
from .model import Model, Models
from .responses import top_k
from .targets import ExplainOptions, Prepared, check_response_size, prepare


@dataclass
class Explained:
    """One image's answer: the first result answers, and with top_k_maps every
    result adds a class map."""

    prepared: Prepared
    results: list[Result]
    region: geometry.Region  # where the model's input lies on the image
    image_size: tuple[int, int]  # the decoded image's (height, width)
    received: float  # time.monotonic() when the call arrived
    ranked: np.ndarray | None = None  # the top-k classes, when ranked with a whole block's

    def top_k(self) -> np.ndarray:
        """The indices of the answer's top-k classes, highest first."""
        if self.ranked is not None:
            return self.ranked
        return top_k(self.results[0].outputs["probabilities"], self.prepared.top_k)

    @property
    def model(self) -> Model:
        return self.prepared.model

    def heatmap(self, result: Result) -> tuple[np.ndarray, geometry.Region]:
        """A result's map and where it lies, at the image's size when asked."""
        values, region = result.outputs["heatmap"], self.region
        if self.prepared.options.original_size:
            height, width = self.image_size
            values = geometry.heatmap_to_image(values, region, width, height)
            region = geometry.Region(0.0, 0.0, float(width), float(height))
        return values, region


@dataclass(frozen=True)
class Job:
    """One request of several asked together (ExplainMany)."""

    name: str
    version: int
    image: Encoded | Raw
    options: ExplainOptions


def _row(result: Result, i: int = 0) -> Result:
    """A one-image block's result as that image's row of every output."""
    return Result({name: value[i] for name, value in result.outputs.items()}, result.queue_s, result.compute_s, result.batch_size)


class Pipeline:
    def __init__(self, models: Models, executor: Executor, limits: Limits, observer):
        self.models = models
        self.executor = executor
        self.limits = limits
        self.calls = Calls(observer)

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

    async def run_image(self, model: Model, admission, prepare, inline: bool, targets: list[tuple[int, int]], until: float | None):
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
            block = Item(canvas[np.newaxis], np.array([class_index], np.int32), np.array([method], np.int32), until, futures[-1])
            model.batcher.submit(block)
        if len(futures) == 1:
            return [_row(await by(until, futures[0]))], extra
        return [_row(found) for found in await all_or_none([by(until, future) for future in futures])], extra

    async def run_block(
        self, model: Model, admission, images: np.ndarray, class_index: np.ndarray, method: np.ndarray, until: float | None, contract: str = IMAGES
    ) -> Result:
        """Images already at the model's size ([N,H,W,3] uint8; MODEL: the model's own
        input [N,H,W,C]), admitted together, as one item: one future, and the outputs
        as arrays [N, ...]."""
        admission.decoded(len(images))
        future = asyncio.get_running_loop().create_future()
        model.batcher.submit(Item(images, class_index, method, until, future, contract=contract))
        return await by(until, future)

    async def run_images(
        self, model: Model, images, class_index: list[int], method: list[int], until: float | None, contract: str = IMAGES
    ) -> tuple[dict, float]:
        """One call's N images, admitted all or none before any decoding: an array
        [N,H,W,3] already at the model's size (or the model's own input tensor) runs as
        one block; otherwise `images` is [(prepare, inline)] per image, each decoded and
        fitted on its own. Returns (every output [N, ...], the longest queue time)."""
        with model.batcher.admit(len(images)) as admission:
            if isinstance(images, np.ndarray):
                result = await self.run_block(
                    model, admission, images, np.array(class_index, np.int32), np.array(method, np.int32), until, contract
                )
                return result.outputs, result.queue_s
            runs = [self.run_image(model, admission, *image, [(c, m)], until) for image, c, m in zip(images, class_index, method)]
            # One image (the common case) needs no tasks of its own; a failed image
            # cancels its siblings, and admission ends only once they have ended.
            results = [found[0] for found, _ in ([await runs[0]] if len(runs) == 1 else await all_or_none(runs))]
        return {name: np.stack([r.outputs[name] for r in results]) for name in results[0].outputs}, max(r.queue_s for r in results)

    def _pixels(self, image: Encoded | Raw, prepared: Prepared) -> np.ndarray:
        options = prepared.options
        background = self.limits.background if options.background is None else options.background
        pixels = decode(image, self.limits.max_pixels, background)
        if options.original_size and prepared.method != PREDICT:
            check_response_size(prepared, pixels.shape[0] * pixels.shape[1], self.limits.max_response_bytes)
        return pixels

    async def explain(self, name: str, version: int, image: Encoded | Raw, options: ExplainOptions, context, api: str, respond, heavy=False):
        """respond(Explained) -> the API's answer, run on the decode pool when `heavy`
        (rendering, a map resized to a large image) or when the map is asked at the
        image's size, inside the call so that its work is counted and drained."""
        received = time.monotonic()
        with self.calls.accounted(api, context) as call:
            call.model = model = self.models.get(name, version)
            prepared = prepare(model, options, self.limits.max_response_bytes)
            with model.batcher.admit(len(prepared.targets)) as admission:
                results, (region, original) = await self.run_image(
                    model,
                    admission,
                    functools.partial(fit, functools.partial(self._pixels, image, prepared), model, options.resize),
                    is_cheap(image, model),
                    prepared.targets,
                    deadline(context, received, options.timeout_ms, self.limits.default_timeout_s),
                )
            call.queue_s = max(result.queue_s for result in results)
            explained = Explained(prepared, results, region, original, received)
            if heavy or (options.original_size and prepared.method != PREDICT):
                return await self.on_pool(lambda: respond(explained))
            return respond(explained)

    async def explain_many(self, jobs: list[Job], context, api: str, respond: Callable, failed: Callable) -> list:
        """Several requests asked together, each answered on its own: respond(i, Explained)
        or failed(i, RequestError) for job i, in order. Images already at their model's
        size that ask the same of the same model, one map at the feature map's size,
        travel as one block (one admission, one item, the rows of one result); the
        others, and a block's requests when the block is refused for room or fails on
        the model (each then fails alone, or not), run one by one. Requests that the
        call's own gRPC deadline ended end the call DEADLINE_EXCEEDED, once all have
        ended (deadlines.of_the_call); a request's own timeout_ms is its answer's."""
        blocks: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            image, options = job.image, job.options
            if isinstance(image, Raw) and image.channels == 3 and options.top_k_maps <= 1 and not options.original_size:
                blocks.setdefault((job.name, job.version, image.height, image.width, options), []).append(i)
        blocks = {key: indices for key, indices in blocks.items() if len(indices) > 1}
        grouped = {i for indices in blocks.values() for i in indices}
        alone = [i for i in range(len(jobs)) if i not in grouped]
        answers: list = [None] * len(jobs)
        remaining = context.time_remaining() if context is not None else None  # as each request arrives
        expired: list[RequestError] = []  # requests that the call's own deadline ended

        def failure(i: int, err: Exception):
            err = as_request_error(err)
            if err.code == grpc.StatusCode.DEADLINE_EXCEEDED and of_the_call(remaining, jobs[i].options.timeout_ms):
                expired.append(err)
            return failed(i, err)

        async def one(i: int):
            job = jobs[i]
            try:
                answers[i] = await self.explain(job.name, job.version, job.image, job.options, context, api, functools.partial(respond, i))
            except Exception as err:  # noqa: BLE001 - one request's failure is its own answer
                answers[i] = failure(i, err)

        async def block(indices: list[int]):
            try:
                for i, explained in zip(indices, await self._block([jobs[i] for i in indices], context, api)):
                    answers[i] = respond(i, explained)
            except _OneByOne:
                await asyncio.gather(*(one(i) for i in indices))
            except Exception as err:  # noqa: BLE001 - the block's requests share the failure
                for i in indices:
                    answers[i] = failure(i, err)

        await asyncio.gather(*(one(i) for i in alone), *(block(indices) for indices in blocks.values()))
        if expired:  # every request has ended (run, or dropped and counted): the call ends as gRPC ends it
            raise expired[0]
        return answers

    async def _block(self, jobs: list[Job], context, api: str) -> list[Explained]:
        first, n = jobs[0], len(jobs)
        received = time.monotonic()
        with self.calls.accounted(api, context, requests=n) as call:
            call.model = model = self.models.get(first.name, first.version)
            image = first.image
            if (image.height, image.width) != (model.height, model.width) or any(len(job.image.pixels) != image.height * image.width * 3 for job in jobs):
                call.counted = False
                raise _OneByOne  # to be fitted, or refused with each one's own message
            prepared = prepare(model, first.options, self.limits.max_response_bytes)
            ((class_index, method),) = prepared.targets
            images = np.frombuffer(b"".join(job.image.pixels for job in jobs), np.uint8).reshape(n, model.height, model.width, 3)
            try:
                with model.batcher.admit(n) as admission:
                    result = await self.run_block(
                        model, admission, images, np.full(n, class_index, np.int32), np.full(n, method, np.int32),
                        deadline(context, received, first.options.timeout_ms, self.limits.default_timeout_s),
                    )
            except RequestError as err:
                if err.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL):
                    call.counted = False
                    raise _OneByOne from None  # room for some of them, or the one the model fails on
                raise
            call.queue_s = result.queue_s
        region = geometry.Region(0.0, 0.0, float(model.width), float(model.height))  # every resize mode: the image itself
        ranked = top_k(result.outputs["probabilities"], prepared.top_k)  # one argpartition for the block
        size = (model.height, model.width)
        return [Explained(prepared, [_row(result, i)], region, size, received, ranked[i]) for i in range(n)]


class _OneByOne(Exception):
    """A block whose requests must run one by one."""
