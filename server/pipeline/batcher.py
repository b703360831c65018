"""Dynamic batching for one model.

Policy: when the device is free, the oldest waiting request starts a batch at
once, unless more requests are still being decoded; then the batch waits for
them up to `batch_wait` after its first request, or until `max_batch_size`.
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

An item is a block of images (KServe's [N,H,W,3] tensor travels as one): the
batcher takes whole blocks while they fit, splits the one that does not fill
the batch's last places (its rest leads the next batch), and answers an item
once all its rows have run, with one future and array slices. Sizes above
count images, not items.

A batch holds requests of one kind: all want a heatmap (the model's explain
signature), or none does (PREDICT: its predict signature, at the cost of a
plain prediction); and all send camserve's uint8 images or all the model's own
input tensor (IMAGES or MODEL, the input contract: export --input-contract).
The oldest request picks the kind; the others keep their places for the next
batch, so neither kind pays for the other's work.

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

log = logging.getLogger("camserve.batcher")

SOLO_FAILURES = 2
PREDICT = -1  # Item.method of a request that wants no heatmap
IMAGES, MODEL = "images", "model"  # Item.contract: camserve's uint8 RGB, or the model's own input tensor


def _count(value) -> bool:
    """A whole number of at least 1 (JSON's true is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 32
    # Seconds the next batch waits for requests already admitted and still being decoded:
    # it never waits for requests that have not arrived (TF Serving's batch_timeout_micros does).
    batch_wait: float = 0.005
    max_enqueued: int = 256
    allowed_batch_sizes: tuple[int, ...] = ()  # empty: powers of two up to max_batch_size

    def check(self):
        """ValueError naming the first knob out of range (a zero batch size would
        stall the batcher at its first request)."""
        if not _count(self.max_batch_size):
            raise ValueError(f"max batch size must be at least 1, got {self.max_batch_size!r}")
        if not self.batch_wait >= 0:
            raise ValueError(f"batch wait must be 0 or more, got {self.batch_wait!r}")
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


@dataclass(eq=False)
class Item:
    images: np.ndarray  # [k,H,W,3] uint8 at the model's input size; MODEL: the model's input [k,H,W,C]
    class_index: np.ndarray  # [k] int32
    method: np.ndarray  # [k] int32, all PREDICT or none
    deadline: float | None  # time.monotonic() seconds
    future: asyncio.Future
    contract: str = IMAGES
    enqueued: float = field(default_factory=time.monotonic)
    taken: int = 0  # rows handed to batches so far
    answered: int = 0  # rows whose outputs are in
    outputs: dict | None = None  # [k, ...] per output, filled as its rows run

    @property
    def rows(self) -> int:
        return len(self.images)

    @property
    def predict(self) -> bool:
        return bool(self.method[0] == PREDICT)

    @property
    def kind(self) -> tuple[str, bool]:
        """What a batch's requests share."""
        return self.contract, self.predict


@dataclass
class Result:
    outputs: dict  # the item's rows of every output, [k, ...]
    queue_s: float
    compute_s: float
    batch_size: int


@dataclass(eq=False)
class Slice:
    """Rows start:stop of an item, in one batch."""

    item: Item
    start: int
    stop: int


RunBatch = Callable[[np.ndarray, np.ndarray, np.ndarray, str], dict]  # images, class_index, method, contract


class Admission:
    """Requests admitted to a batcher and not yet decoded."""

    def __init__(self, batcher: Batcher, count: int):
        self.batcher, self.left = batcher, count

    def decoded(self, count: int = 1):
        count = min(count, self.left)
        if count:
            self.left -= count
            self.batcher._decoded(count)

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
        observer,  # ops/observer.py's ModelObserver: the metrics and the model's statistics
        name="",
        batches_in_flight: int = 1,  # the executor needs as many threads
    ):
        self.run_batch = run_batch
        self._device_slots = asyncio.Semaphore(batches_in_flight)
        self._batches: set[asyncio.Task] = set()
        self.options = options
        self.ladder = options.ladder()
        self.executor = executor
        self.observer = observer
        self.name = name
        self.queue: deque[Item] = deque()
        self.queued = 0  # rows in the queue not yet taken
        self.incoming = 0  # images accepted and still being decoded
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.crashed: BaseException | None = None
        self._reported = False
        self._running: list[list[Slice]] = []  # batches on the device
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
        if self.incoming + self.queued + count > self.options.max_enqueued:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"model {self.name!r} has {self.incoming + self.queued} images admitted (max_enqueued "
                f"{self.options.max_enqueued}); retry later",
            )
        self.incoming += count
        return Admission(self, count)

    def _decoded(self, count: int):
        self.incoming -= count
        self._wakeup.set()

    def submit(self, item: Item):
        """An admitted block joins the queue."""
        if self.crashed is not None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {self.name!r} cannot run requests (its batcher stopped); retry on another replica")
        if self._closed:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {self.name!r} version was retired; retry")
        self.queue.append(item)
        self.queued += item.rows
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
            self._fail(self._pop(), self.crashed)
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
            self._unloaded(self._pop())

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
            if self.queued < self.options.max_batch_size and self.incoming:
                flush_at = self.queue[0].enqueued + self.options.batch_wait
                await self._wait_for(lambda: self.queued >= self.options.max_batch_size or self.incoming == 0, flush_at)
            batch = self._take()
            if not batch:
                self._device_slots.release()
                continue
            self._running.append(batch)
            task = asyncio.get_running_loop().create_task(self._run_on_device(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
            task.add_done_callback(self._supervise)

    async def _run_on_device(self, batch: list[Slice]):
        try:
            await self._run(batch)
        except BaseException as err:  # what _run lets through kills this task: answer its callers first
            if isinstance(err, asyncio.CancelledError):  # stop(): the model is going away
                for part in batch:
                    self._unloaded(part.item)
            else:
                self.crashed = self.crashed or err  # before the slot frees: no further batch starts
                for part in batch:
                    self._fail(part.item, err)
            raise
        finally:
            self._running.remove(batch)
            self._device_slots.release()
            if not self.queue and not self._running:
                self.idle.set()

    def _pop(self) -> Item:
        item = self.queue.popleft()
        self.queued -= item.rows - item.taken
        return item

    def _take(self) -> list[Slice]:
        """The oldest live requests of the oldest one's kind, up to max_batch_size
        rows, the last block split to fit; requests of the other kind go back to
        the front of the queue, in order."""
        now = time.monotonic()
        taken, other, room = [], [], self.options.max_batch_size
        while self.queue and room:
            item = self.queue[0]
            if item.future.done():  # cancelled by the caller, the deadline, or a failed part
                self._pop()
                self._drop(item, "deadline" if item.deadline and now >= item.deadline else "cancelled")
            elif item.deadline is not None and now >= item.deadline:
                self._pop()
                item.future.set_exception(
                    RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed while the request was queued")
                )
                self._drop(item, "deadline")
            elif taken and item.kind != taken[0].item.kind:
                other.append(self._pop())
            else:
                rows = min(room, item.rows - item.taken)
                taken.append(Slice(item, item.taken, item.taken + rows))
                item.taken += rows
                self.queued -= rows
                room -= rows
                if item.taken == item.rows:
                    self.queue.popleft()
        for item in reversed(other):
            self.queue.appendleft(item)
            self.queued += item.rows - item.taken
        self._observe_depth()
        return taken

    def _padded_size(self, n: int) -> int:
        return next(size for size in self.ladder if size >= n)

    async def _run(self, batch: list[Slice]):
        try:
            await self._execute(batch)
            return
        except Exception as err:  # noqa: BLE001 - one request's trouble must not fail its batch-mates
            self._failed(err, len(batch))
            if len(batch) == 1:
                self._fail(batch[0].item, err)
                return
            last = err
        in_a_row = 0
        for i, part in enumerate(batch):
            if in_a_row == SOLO_FAILURES:
                log.error("model %s fails alone too; failing the %d other requests of the batch", self.name, len(batch) - i)
                for rest in batch[i:]:
                    self._fail(rest.item, last)
                return
            if part.item.future.done():  # another part of its block failed
                continue
            try:
                await self._execute([part])
                in_a_row = 0
            except Exception as solo:  # noqa: BLE001 - this request alone fails: only it does
                self._failed(solo, 1)
                self._fail(part.item, solo)
                last, in_a_row = solo, in_a_row + 1

    async def _execute(self, batch: list[Slice]):
        """Runs one padded batch and answers the requests it completes; raises what
        the model run raised."""
        rows = sum(part.stop - part.start for part in batch)
        size = self._padded_size(rows)
        first = batch[0].item
        if len(batch) == 1 and rows == size and first.rows == size:  # one whole block that fills the batch: as it is
            images, class_index, method = first.images, first.class_index, first.method
        else:
            padding = size - rows
            kind = PREDICT if first.predict else 0  # padding of the batch's kind
            images = np.concatenate([*(p.item.images[p.start : p.stop] for p in batch), np.zeros((padding, *first.images.shape[1:]), first.images.dtype)])
            class_index = np.concatenate([*(p.item.class_index[p.start : p.stop] for p in batch), np.full(padding, -1, np.int32)])
            method = np.concatenate([*(p.item.method[p.start : p.stop] for p in batch), np.full(padding, kind, np.int32)])
        started = time.monotonic()
        outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self.run_batch, images, class_index, method, first.contract)
        compute_s = time.monotonic() - started
        self.observer.batch(rows, size, compute_s, "predict" if first.predict else "explain")
        offset = 0
        for part in batch:
            item, count = part.item, part.stop - part.start
            if not item.future.done():
                if count == item.rows:  # the whole block in this batch: views of the outputs
                    item.outputs = {name: value[offset : offset + count] for name, value in outputs.items()}
                else:
                    if item.outputs is None:
                        item.outputs = {name: np.empty((item.rows, *value.shape[1:]), value.dtype) for name, value in outputs.items()}
                    for name, value in outputs.items():
                        item.outputs[name][part.start : part.stop] = value[offset : offset + count]
                item.answered += count
                if item.answered == item.rows:
                    item.future.set_result(Result(item.outputs, started - item.enqueued, compute_s, rows))
            offset += count

    def _failed(self, err: Exception, requests: int):
        log.error("model %s: a batch of %d failed: %s: %s", self.name, requests, type(err).__name__, (str(err).splitlines() or [""])[0][:300])
        self.observer.batch_failed(type(err).__name__)

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
        self.observer.dropped(reason)

    def _observe_depth(self):
        self.observer.queue_depth(self.queued)
