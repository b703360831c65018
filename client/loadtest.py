"""Load generation against a camserve server, over the native API or KServe v2;
usable as a library:

    sender = functools.partial(native_sender, "localhost:8500", model="shapes")
    reports = run_levels(sender, images, closed=[1, 8, 32], rates=[100], duration=10)

Closed loop: `concurrency` callers each send their next request as soon as the
previous one answers. Open loop: requests arrive at `rate` per second with
Poisson (exponential) gaps whatever the server does, and latency is measured
from each request's scheduled time, so queueing in the client is not hidden.
Requests of the warm-up are not counted; every counted request is accounted
for, as a success or an error by status code.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable

import grpc
import numpy as np

from camserve.progress import StatusLine

from .client import AsyncClient
from .connection import Connection


@dataclass
class LevelReport:
    mode: str  # "closed" or "open"
    level: float  # concurrency, or arrivals per second
    duration_s: float
    sent: int
    succeeded: int
    errors: dict[str, int]
    throughput: float  # images answered per second (successful calls x images_per_call)
    latency_ms: dict[str, float]  # p50, p90, p99, max
    mean_batch_size: float  # as the server reports it; nan when unknown
    latencies_ms: list[float] = field(default_factory=list, repr=False)  # per call
    images_per_call: int = 1

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("latencies_ms")
        return d


def percentiles(latencies_ms) -> dict[str, float]:
    if not len(latencies_ms):
        return dict.fromkeys(("p50", "p90", "p99", "max"), float("nan"))
    values = np.asarray(latencies_ms)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(values.max())}


# send(image) sends one image and returns the server's batch size for it (None
# if the API does not say); it raises grpc.aio.AioRpcError on failure.
Send = Callable[[object], Awaitable[int | None]]


class native_sender:  # noqa: N801 - used like a function, as an async context manager
    """Sends through camserve's native Explain, or with images_per_call > 1 the
    image that many times in one ExplainMany call; predict_only asks for no heatmap."""

    def __init__(
        self, target, model: str | None = None, timeout: float = 30.0, method="gradcam", images_per_call=1,
        predict_only=False, **connection,
    ):
        self.client = AsyncClient(target, model=model, timeout=timeout, retries=0, **connection)
        self.images_per_call = images_per_call
        self.options = {"heatmap_type": "none"} if predict_only else {"method": method}

    async def send(self, image):
        if self.images_per_call == 1:
            return (await self.client.explain(image, **self.options)).batch_size
        results = await self.client.explain_many([image] * self.images_per_call, per_call=self.images_per_call, **self.options)
        failed = next((r for r in results if r.error), None)
        if failed:
            raise RuntimeError(f"{failed.error[0]}: {failed.error[1]}")
        return max(r.batch_size for r in results)

    async def batch_counts(self):
        return None  # every response carries its batch size

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.client.close()


class kserve_sender:  # noqa: N801
    """Sends through KServe v2 ModelInfer: raw pixels as `images`, encoded bytes as
    `image_bytes`. Only `class_index` and `heatmap_scale` are asked back, to keep the
    response small while the map is computed; predict_only asks for `class_index`
    alone, which the server answers from the predict signature."""

    def __init__(self, target, model: str, timeout: float = 30.0, images_per_call=1, predict_only=False, **connection):
        from camserve.kserve import grpc_predict_v2_pb2 as kpb
        from camserve.kserve import grpc_predict_v2_pb2_grpc as kpb_grpc

        self.kpb = kpb
        link = Connection(target, retries=0, **connection)
        self.channels = link.channels(aio=True)
        self.metadata = link.metadata()
        self._stubs = itertools.cycle([kpb_grpc.GRPCInferenceServiceStub(channel) for channel in self.channels])
        self.model, self.timeout, self.images_per_call = model, timeout, images_per_call
        self.outputs = ("class_index",) if predict_only else ("class_index", "heatmap_scale")

    def _request(self, image):
        n = self.images_per_call
        request = self.kpb.ModelInferRequest(model_name=self.model)
        if isinstance(image, (bytes, bytearray)):
            request.inputs.add(name="image_bytes", datatype="BYTES", shape=[n])
            request.raw_input_contents.append((len(image).to_bytes(4, "little") + bytes(image)) * n)
        else:
            image = np.ascontiguousarray(image, np.uint8)
            request.inputs.add(name="images", datatype="UINT8", shape=[n, *image.shape])
            request.raw_input_contents.append(image.tobytes() * n)
        for name in self.outputs:
            request.outputs.add(name=name)
        return request

    async def send(self, image):
        await next(self._stubs).ModelInfer(self._request(image), timeout=self.timeout, metadata=self.metadata)
        return None

    async def batch_counts(self):
        """(images run, batches run) from the model's statistics: KServe responses do not say."""
        request = self.kpb.ModelStatisticsRequest(name=self.model)
        stats = await next(self._stubs).ModelStatistics(request, timeout=self.timeout, metadata=self.metadata)
        return stats.model_stats[0].inference_count, stats.model_stats[0].execution_count

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        for channel in self.channels:
            await channel.close()


class _Tally:
    def __init__(self):
        self.sent, self.latencies, self.batches, self.errors = 0, [], [], Counter()

    async def call(self, send: Send, image, started: float, counted: bool):
        self.sent += counted
        try:
            batch = await send(image)
        except grpc.aio.AioRpcError as err:
            if counted:
                self.errors[err.code().name] += 1
            return
        except RuntimeError as err:  # an image of an ExplainMany call failed: "CODE: message"
            if counted:
                self.errors[str(err).split(":")[0]] += 1
            return
        if counted:
            self.latencies.append((time.monotonic() - started) * 1e3)
            if batch:
                self.batches.append(batch)

    def report(self, mode: str, level: float, elapsed: float) -> LevelReport:
        return LevelReport(
            mode=mode,
            level=level,
            duration_s=elapsed,
            sent=self.sent,
            succeeded=len(self.latencies),
            errors=dict(self.errors),
            throughput=len(self.latencies) / elapsed,
            latency_ms=percentiles(self.latencies),
            mean_batch_size=float(np.mean(self.batches)) if self.batches else float("nan"),
            latencies_ms=self.latencies,
        )


async def _progress(tally: _Tally, label: str, start: float, total: float, stream):
    """The level's status line until the level ends (this task is cancelled)."""
    if stream is None:
        return
    status = StatusLine(stream)
    try:
        while True:
            await asyncio.sleep(status.every)
            now = time.monotonic() - start
            p50 = percentiles(tally.latencies[-200:])["p50"]
            status.update(
                f"  {label}: {min(now, total):4.1f}/{total:.0f}s sent {tally.sent} "
                f"ok {len(tally.latencies)} errors {sum(tally.errors.values())} recent p50 {p50:.1f} ms"
            )
    finally:
        status.close()


async def closed_loop(send: Send, images, concurrency: int, duration: float, warmup: float, stream=None) -> LevelReport:
    tally, start = _Tally(), time.monotonic()
    measure_from, end = start + warmup, start + warmup + duration

    async def caller(k: int):
        i = k
        while (now := time.monotonic()) < end:
            await tally.call(send, images[i % len(images)], now, now >= measure_from)
            i += concurrency

    ticker = asyncio.create_task(_progress(tally, f"concurrency {concurrency}", start, warmup + duration, stream))
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    ticker.cancel()
    return tally.report("closed", concurrency, time.monotonic() - measure_from)


async def open_loop(send: Send, images, rate: float, duration: float, warmup: float, seed: int = 0, stream=None) -> LevelReport:
    rng = np.random.default_rng(seed)
    tally, start = _Tally(), time.monotonic()
    measure_from, end = start + warmup, start + warmup + duration
    ticker = asyncio.create_task(_progress(tally, f"rate {rate:g}/s", start, warmup + duration, stream))
    calls, scheduled, i = [], start, 0
    while (scheduled := scheduled + rng.exponential(1.0 / rate)) < end:
        await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
        # Latency counts from the scheduled moment: a late start is the server's or client's delay, not free.
        calls.append(asyncio.create_task(tally.call(send, images[i % len(images)], scheduled, scheduled >= measure_from)))
        i += 1
    await asyncio.gather(*calls)
    ticker.cancel()
    return tally.report("open", rate, end - measure_from)


def run_levels(
    sender_factory: Callable[[], object],
    images,
    closed=(),
    rates=(),
    duration: float = 10.0,
    warmup: float = 2.0,
    stream=sys.stderr,
) -> list[LevelReport]:
    """Each level with a fresh sender (one connection), one after another."""

    async def one(kind, level):
        async with sender_factory() as sender:
            before = await sender.batch_counts()
            if kind == "closed":
                report = await closed_loop(sender.send, images, int(level), duration, warmup, stream)
            else:
                report = await open_loop(sender.send, images, float(level), duration, warmup, stream=stream)
            after = await sender.batch_counts()
            if before and after and after[1] > before[1]:  # includes the warm-up's batches
                report.mean_batch_size = (after[0] - before[0]) / (after[1] - before[1])
            report.images_per_call = sender.images_per_call
            report.throughput *= sender.images_per_call
            return report

    reports = []
    for kind, level in [("closed", c) for c in closed] + [("open", r) for r in rates]:
        report = asyncio.run(one(kind, level))
        if stream is not None:
            print(
                f"  {kind} {level:g}: {report.throughput:.1f} req/s, p50 {report.latency_ms['p50']:.1f} ms, "
                f"p99 {report.latency_ms['p99']:.1f} ms, errors {sum(report.errors.values())}, "
                f"batch {report.mean_batch_size:.1f}",
                file=stream,
                flush=True,
            )
        reports.append(report)
    return reports
