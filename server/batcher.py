"""Dynamic batching for one model.

Policy: when the device is free, the oldest waiting request starts a batch at
once, unless more requests are still being decoded; then the batch waits for
them up to `batch_timeout` after its first request, or until `max_batch_size`.
So a lone request on an idle server never waits, and while a batch runs, the
requests that arrive meanwhile form the next one. Batches are padded to the
smallest of `allowed_batch_sizes` that fits, so XLA only ever sees shapes that
warm-up compiled. At most `max_enqueued` requests are admitted (being decoded
or waiting); beyond that callers get RESOURCE_EXHAUSTED at once, before their
images are decoded. Requests whose deadline passed or whose caller went away
are dropped before they run.

On a GPU a second batch may be in flight while the first runs
(`batches_in_flight` 2: its inputs are copied while the other computes); on
a CPU one batch at a time is fastest, and requests that arrive meanwhile
form the next batch.

A batch holds requests of one kind: all want a heatmap (the model's explain
signature), or none does (PREDICT: its predict signature, at the cost of a
plain prediction). The oldest request picks the kind; the others keep their
places for the next batch, so neither kind pays for the other's work.

A failed batch is logged and counted, and its requests run again one at a time
so that one bad request does not fail its batch-mates; after SOLO_FAILURES
failures in a row the model itself is failing, and the rest fail at once
rather than multiplying the work. Callers get INTERNAL with a short message and
an error id; the log line carries the id and the whole error. If the loop
itself dies, `on_crash` is told (the server then fails its health checks).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable

import grpc
import numpy as np

from .errors import RequestError
from .statistics import ModelStats

log = logging.getLogger("camserve.batcher")

SOLO_FAILURES = 2
PREDICT = -1  # Item.method of a request that wants no heatmap


def _count(value) -> bool:
    """A whole number of at least 1 (JSON's true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 32
    batch_timeout: float = 0.005  # seconds
    max_enqueued: int = 256
    allowed_batch_sizes: tuple[int, ...] = ()  # empty: powers of two up to max_batch_size

    def check(self):
        """ValueError naming the first knob out of range (a zero batch size would
        stall the batcher at its first request)."""
        if not _count(self.max_batch_size):
            raise ValueError(f"max batch size must be at least 1, got {self.max_batch_size!r}")
        if not self.batch_timeout >= 0:
            raise ValueError(f"batch timeout must be 0 or more, got {self.batch_timeout!r}")
        if not _count(self.max_enqueued):
            raise ValueError(f"max enqueued must be at least 1, got {self.max_enqueued!r}")
        if not all(_count(size) for size in self.allowed_batch_sizes):
            raise ValueError(f"allowed batch sizes are positive integers, got {list(self.allowed_batch_sizes)}")
        if self.allowed_batch_sizes and max(self.allowed_batch_sizes) != self.max_batch_size:
            raise ValueError(
                f"the largest allowed batch size ({max(self.allowed_batch_sizes)}) must equal "
                f"the max batch size ({self.max_batch_size})"
            )

    def ladder(self) -> tuple[int, ...]:
        if self.allowed_batch_sizes:
            return tuple(sorted(set(self.allowed_batch_sizes)))
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


class Admission:
    """Requests admitted to a batcher and not yet decoded."""

    def __init__(self, batcher: Batcher, count: int):
        self.batcher, self.left = batcher, count

    def decoded(self):
        if self.left:
            self.left -= 1
            self.batcher._decoded()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        while self.left:
            self.decoded()


class Batcher:
    def __init__(
        self,
        run_batch: RunBatch,
        options: BatchingOptions,
        executor: Executor,
        stats: ModelStats,
        metrics=None,
        name="",
        batches_in_flight: int = 1,  # the executor needs as many threads
    ):
        self.run_batch = run_batch
        self._device_slots = asyncio.Semaphore(batches_in_flight)
        self._batches: set[asyncio.Task] = set()
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
        self.crashed: BaseException | None = None
        self._reported = False
        self._running: list[list[Item]] = []  # batches on the device
        self.on_crash: Callable[[BaseException], None] | None = None
        self.idle = asyncio.Event()  # nothing queued and no batch running
        self.idle.set()

    # -- callers -----------------------------------------------------------
    def admit(self, count: int = 1) -> Admission:
        """Room for `count` requests that are about to be decoded, or RESOURCE_EXHAUSTED
        before any work; the next batch may wait for them. Use it as a context
        manager: each request leaves with Admission.decoded(), and whatever was
        not decoded (a failure, a cancelled call) leaves at the end of the block."""
        if self.crashed is not None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {self.name!r} cannot run requests (its batcher stopped); retry on another replica")
        if self._closed:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {self.name!r} version was retired; retry")
        if self.incoming + len(self.queue) + count > self.options.max_enqueued:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"model {self.name!r} has {self.incoming + len(self.queue)} requests admitted (max_enqueued "
                f"{self.options.max_enqueued}); retry later",
            )
        self.incoming += count
        return Admission(self, count)

    def _decoded(self):
        self.incoming -= 1
        self._wakeup.set()

    def submit(self, item: Item):
        """An admitted request joins the queue."""
        if self.crashed is not None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {self.name!r} cannot run requests (its batcher stopped); retry on another replica")
        if self._closed:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {self.name!r} version was retired; retry")
        self.queue.append(item)
        self.idle.clear()
        self._observe_depth()
        self._wakeup.set()

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")
        self._task.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task):
        """A done callback of the loop and of every batch task: the first one that
        died of something other than a model error is reported, once."""
        if task.cancelled() or task.exception() is None or self._reported:
            return
        self._reported = True
        self.crashed = self.crashed or task.exception()
        log.critical("the batcher of %s stopped: %r; failing health", self.name, self.crashed, exc_info=self.crashed)
        while self.queue:  # a batch's own callers were answered by _run_on_device
            self._fail(self.queue.popleft(), self.crashed)
        if not self._running:  # nothing will run here again: retiring and draining need not wait
            self.idle.set()
        if self.on_crash:
            self.on_crash(self.crashed)

    async def drained(self):
        """Returns once no request is being decoded for, waiting or running here."""
        while self.incoming or not self.idle.is_set():
            await asyncio.sleep(0.05)

    async def stop(self):
        """Stops the loop and every batch; whoever still waits (only on a forced stop:
        a drain waits for drained() first) is answered UNAVAILABLE."""
        self._closed = True
        tasks = [task for task in (self._task, *self._batches) if task]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        while self.queue:
            self._unloaded(self.queue.popleft())

    @staticmethod
    def _unloaded(item: Item):
        if not item.future.done():
            item.future.set_exception(RequestError(grpc.StatusCode.UNAVAILABLE, "the model was unloaded; retry"))

    # -- the loop ----------------------------------------------------------
    async def _wait_for(self, condition, until: float | None):
        """Until condition() holds or `until` passes: one timer for the whole wait,
        not a wait_for (a timer and a task) re-armed on every wake-up."""
        timer = None if until is None else asyncio.get_running_loop().call_at(self._loop_time(until), self._wakeup.set)
        try:
            while not condition() and (until is None or time.monotonic() < until):
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            if timer:
                timer.cancel()

    @staticmethod
    def _loop_time(monotonic: float) -> float:
        """A time.monotonic() instant on the event loop's clock."""
        loop = asyncio.get_running_loop()
        return loop.time() + (monotonic - time.monotonic())

    async def _loop(self):
        while True:
            await self._device_slots.acquire()  # a place on the device: the next batch forms meanwhile
            if self.crashed is not None:
                return
            if not self.queue and not self._running:
                self.idle.set()
            await self._wait_for(lambda: bool(self.queue), None)
            if len(self.queue) < self.options.max_batch_size and self.incoming:
                flush_at = self.queue[0].enqueued + self.options.batch_timeout
                await self._wait_for(lambda: len(self.queue) >= self.options.max_batch_size or self.incoming == 0, flush_at)
            batch = self._take()
            if not batch:
                self._device_slots.release()
                continue
            self._running.append(batch)
            task = asyncio.get_running_loop().create_task(self._run_on_device(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
            task.add_done_callback(self._supervise)

    async def _run_on_device(self, batch: list[Item]):
        try:
            await self._run(batch)
        except BaseException as err:  # what _run lets through kills this task: answer its callers first
            if isinstance(err, asyncio.CancelledError):  # stop(): the model is going away
                for item in batch:
                    self._unloaded(item)
            else:
                self.crashed = self.crashed or err  # before the slot frees: no further batch starts
                for item in batch:
                    self._fail(item, err)
            raise
        finally:
            self._running.remove(batch)
            self._device_slots.release()
            if not self.queue and not self._running:
                self.idle.set()

    def _take(self) -> list[Item]:
        """The oldest live requests of the oldest one's kind, up to max_batch_size;
        requests of the other kind go back to the front of the queue, in order."""
        now = time.monotonic()
        taken, other = [], []
        while self.queue and len(taken) < self.options.max_batch_size:
            item = self.queue.popleft()
            if item.future.done():  # cancelled by the caller or the deadline
                self._drop(item, "deadline" if item.deadline and now >= item.deadline else "cancelled")
            elif item.deadline is not None and now >= item.deadline:
                item.future.set_exception(
                    RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while the request was queued")
                )
                self._drop(item, "deadline")
            elif taken and (item.method == PREDICT) != (taken[0].method == PREDICT):
                other.append(item)
            else:
                taken.append(item)
        self.queue.extendleft(reversed(other))
        self._observe_depth()
        return taken

    def _padded_size(self, n: int) -> int:
        return next(size for size in self.ladder if size >= n)

    async def _run(self, batch: list[Item]):
        try:
            await self._execute(batch)
            return
        except Exception as err:  # noqa: BLE001 - one request's trouble must not fail its batch-mates
            self._failed(err, len(batch))
            if len(batch) == 1:
                self._fail(batch[0], err)
                return
            last = err
        in_a_row = 0
        for i, item in enumerate(batch):
            if in_a_row == SOLO_FAILURES:
                log.error("model %s fails alone too; failing the %d other requests of the batch", self.name, len(batch) - i)
                for rest in batch[i:]:
                    self._fail(rest, last)
                return
            try:
                await self._execute([item])
                in_a_row = 0
            except Exception as solo:  # noqa: BLE001 - this request alone fails: only it does
                self._failed(solo, 1)
                self._fail(item, solo)
                last, in_a_row = solo, in_a_row + 1

    async def _execute(self, batch: list[Item]):
        """Runs one padded batch and answers its requests; raises what the model run raised."""
        size = self._padded_size(len(batch))
        images = np.zeros((size, *batch[0].image.shape), np.uint8)
        class_index = np.full(size, -1, np.int32)
        method = np.full(size, PREDICT if batch[0].method == PREDICT else 0, np.int32)  # padding of the batch's kind
        for i, item in enumerate(batch):
            images[i], class_index[i], method[i] = item.image, item.class_index, item.method
        started = time.monotonic()
        outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self.run_batch, images, class_index, method)
        compute_s = time.monotonic() - started
        self.stats.batch(len(batch), compute_s)
        if self.metrics:
            self.metrics.observe_batch(self.name, len(batch), size, compute_s, "predict" if batch[0].method == PREDICT else "explain")
        for i, item in enumerate(batch):
            if not item.future.done():
                row = {name: value[i] for name, value in outputs.items()}
                item.future.set_result(Result(row, started - item.enqueued, compute_s, len(batch)))

    def _failed(self, err: Exception, requests: int):
        log.error("model %s: a batch of %d failed: %s: %s", self.name, requests, type(err).__name__, (str(err).splitlines() or [""])[0][:300])
        if self.metrics:
            self.metrics.batch_failed(self.name, type(err).__name__)

    def _fail(self, item: Item, err: BaseException):
        """INTERNAL with an id the log line carries in full; TensorFlow's text stays in the log."""
        if item.future.done():
            return
        error_id = uuid.uuid4().hex[:12]
        log.error("model %s: request failed, error id %s: %s: %s", self.name, error_id, type(err).__name__, err)
        item.future.set_exception(
            RequestError(grpc.StatusCode.INTERNAL, f"the model failed to run this request (error id {error_id}, in the server log)")
        )

    def _drop(self, item: Item, reason: str):
        if self.metrics:
            self.metrics.dropped(self.name, reason)

    def _observe_depth(self):
        if self.metrics:
            self.metrics.queue_depth(self.name, len(self.queue))
