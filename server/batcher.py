"""Dynamic batching for one model.

Policy: when the device is free, the oldest waiting request starts a batch at
once, unless more requests are still being decoded; then the batch waits for
them up to `batch_timeout` after its first request, or until `max_batch_size`.
So a lone request on an idle server never waits, and while a batch runs, the
requests that arrive meanwhile form the next one. Batches are padded to the
smallest of `allowed_batch_sizes` that fits, so XLA only ever sees shapes that
warm-up compiled. At most `max_enqueued` requests wait; beyond that callers get
RESOURCE_EXHAUSTED at once. Requests whose deadline passed or whose caller went
away are dropped before they run.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

import grpc
import numpy as np

from .errors import RequestError
from .statistics import ModelStats


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 32
    batch_timeout: float = 0.005  # seconds
    max_enqueued: int = 256
    allowed_batch_sizes: tuple[int, ...] = ()  # empty: powers of two up to max_batch_size

    def ladder(self) -> tuple[int, ...]:
        if self.allowed_batch_sizes:
            sizes = tuple(sorted(set(self.allowed_batch_sizes)))
            if sizes[-1] != self.max_batch_size:
                raise ValueError("the largest allowed batch size must equal max_batch_size")
            return sizes
        sizes = [1]
        while sizes[-1] < self.max_batch_size:
            sizes.append(min(sizes[-1] * 2, self.max_batch_size))
        return tuple(sizes)


@dataclass
class Item:
    image: np.ndarray  # [H,W,3] uint8 at the model's input size
    class_index: int
    method: int
    deadline: float | None  # time.monotonic() seconds
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class Result:
    outputs: dict  # this item's row of every output
    queue_s: float
    compute_s: float
    batch_size: int


RunBatch = Callable[[np.ndarray, np.ndarray, np.ndarray], dict]


class Batcher:
    def __init__(
        self, run_batch: RunBatch, options: BatchingOptions, executor: Executor, stats: ModelStats, metrics=None, name=""
    ):
        self.run_batch = run_batch
        self.stats = stats
        self.options = options
        self.ladder = options.ladder()
        self.executor = executor
        self.metrics = metrics
        self.name = name
        self.queue: deque[Item] = deque()
        self.incoming = 0  # requests accepted and still being decoded
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.idle = asyncio.Event()  # nothing queued and no batch running
        self.idle.set()

    # -- callers -----------------------------------------------------------
    def expect(self):
        """A request for this model started decoding; the next batch may wait for it."""
        self.incoming += 1

    def expected_done(self):
        self.incoming -= 1
        self._wakeup.set()

    def submit(self, item: Item):
        if self._closed:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {self.name!r} version was retired; retry")
        if len(self.queue) >= self.options.max_enqueued:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"model {self.name!r} has {len(self.queue)} requests waiting (max_enqueued); retry later",
            )
        self.queue.append(item)
        self.idle.clear()
        self._observe_depth()
        self._wakeup.set()

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def drained(self):
        """Returns once no request is being decoded for, waiting or running here."""
        while self.incoming or not self.idle.is_set():
            await asyncio.sleep(0.05)

    async def stop(self):
        self._closed = True
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self.queue:  # only on a forced stop: tell the waiting callers
            item = self.queue.popleft()
            if not item.future.done():
                item.future.set_exception(RequestError(grpc.StatusCode.UNAVAILABLE, "the model was unloaded; retry"))

    # -- the loop ----------------------------------------------------------
    async def _wait_for(self, condition, until: float | None):
        while not condition():
            self._wakeup.clear()
            timeout = None if until is None else until - time.monotonic()
            if timeout is not None and timeout <= 0:
                return
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return

    async def _loop(self):
        while True:
            if not self.queue:
                self.idle.set()
            await self._wait_for(lambda: bool(self.queue), None)
            flush_at = self.queue[0].enqueued + self.options.batch_timeout
            await self._wait_for(
                lambda: len(self.queue) >= self.options.max_batch_size or self.incoming == 0, flush_at
            )
            batch = self._take()
            if batch:
                await self._run(batch)

    def _take(self) -> list[Item]:
        now = time.monotonic()
        taken = []
        while self.queue and len(taken) < self.options.max_batch_size:
            item = self.queue.popleft()
            if item.future.done():  # cancelled by the caller or the deadline
                self._drop(item, "deadline" if item.deadline and now >= item.deadline else "cancelled")
            elif item.deadline is not None and now >= item.deadline:
                item.future.set_exception(
                    RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while the request was queued")
                )
                self._drop(item, "deadline")
            else:
                taken.append(item)
        self._observe_depth()
        return taken

    def _padded_size(self, n: int) -> int:
        return next(size for size in self.ladder if size >= n)

    async def _run(self, batch: list[Item]):
        size = self._padded_size(len(batch))
        images = np.zeros((size, *batch[0].image.shape), np.uint8)
        class_index = np.full(size, -1, np.int32)
        method = np.zeros(size, np.int32)
        for i, item in enumerate(batch):
            images[i], class_index[i], method[i] = item.image, item.class_index, item.method
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self.executor, self.run_batch, images, class_index, method)
        except Exception as err:  # noqa: BLE001 - one request's trouble must not fail its batch-mates
            if len(batch) > 1:
                for item in batch:
                    await self._run([item])
                return
            self._finish_with_error(batch[0], err)
            return
        compute_s = time.monotonic() - started
        self.stats.batch(len(batch), compute_s)
        if self.metrics:
            self.metrics.observe_batch(self.name, len(batch), size, compute_s)
        for i, item in enumerate(batch):
            if not item.future.done():
                row = {name: value[i] for name, value in outputs.items()}
                item.future.set_result(Result(row, started - item.enqueued, compute_s, len(batch)))

    def _finish_with_error(self, item: Item, err: Exception):
        if not item.future.done():
            item.future.set_exception(RequestError(grpc.StatusCode.INTERNAL, f"model run failed: {err}"))

    def _drop(self, item: Item, reason: str):
        if self.metrics:
            self.metrics.dropped(self.name, reason)

    def _observe_depth(self):
        if self.metrics:
            self.metrics.queue_depth(self.name, len(self.queue))
