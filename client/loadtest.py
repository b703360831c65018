"""Load generation against a camserve server, usable as a library.

Closed loop: `concurrency` callers each send their next request as soon as the
previous one answers, for `duration` seconds after a `warmup` whose requests
are not counted. Every request sent is accounted for, as a success or an error
by status code.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np

from .client import AsyncClient


@dataclass
class LevelReport:
    concurrency: int
    duration_s: float
    sent: int
    succeeded: int
    errors: dict[str, int]
    throughput: float  # successful requests per second
    latency_ms: dict[str, float]  # p50, p90, p99, max
    mean_batch_size: float
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self, with_samples: bool = False) -> dict:
        d = asdict(self)
        if not with_samples:
            d.pop("latencies_ms")
        return d


def percentiles(latencies_ms) -> dict[str, float]:
    if not len(latencies_ms):
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "max": float("nan")}
    values = np.asarray(latencies_ms)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(values.max())}


async def closed_loop(
    target: str,
    images: list,
    concurrency: int,
    duration: float,
    warmup: float = 1.0,
    model: str | None = None,
    timeout: float = 30.0,
    **options,
) -> LevelReport:
    latencies, batch_sizes, errors = [], [], Counter()
    counted = {"sent": 0}
    async with AsyncClient(target, model=model, timeout=timeout, retries=0) as client:
        start = time.monotonic()
        measure_from, end = start + warmup, start + warmup + duration

        async def caller(k: int):
            i = k
            while (now := time.monotonic()) < end:
                counts = now >= measure_from
                counted["sent"] += counts
                try:
                    result = await client.explain(images[i % len(images)], **options)
                    if counts:
                        latencies.append((time.monotonic() - now) * 1e3)
                        batch_sizes.append(result.batch_size)
                except grpc.aio.AioRpcError as err:
                    if counts:
                        errors[err.code().name] += 1
                i += concurrency

        await asyncio.gather(*(caller(k) for k in range(concurrency)))
        elapsed = time.monotonic() - measure_from
    return LevelReport(
        concurrency=concurrency,
        duration_s=elapsed,
        sent=counted["sent"],
        succeeded=len(latencies),
        errors=dict(errors),
        throughput=len(latencies) / elapsed,
        latency_ms=percentiles(latencies),
        mean_batch_size=float(np.mean(batch_sizes)) if batch_sizes else 0.0,
        latencies_ms=latencies,
    )


def sweep(target: str, images: list, levels, duration: float, warmup: float = 1.0, progress=None, **options):
    """A closed-loop report per concurrency level, one level after another."""
    reports = []
    for level in levels:
        report = asyncio.run(closed_loop(target, images, level, duration, warmup, **options))
        if progress:
            progress(report)
        reports.append(report)
    return reports
