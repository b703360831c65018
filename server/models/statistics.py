"""Per-model counters in the shape of the KServe/Triton ModelStatistics
extension: requests by outcome with their time, queue and compute time, and
executions per batch size. Touched only from the event loop thread."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1):
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class ModelStats:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute: Duration = field(default_factory=Duration)
    inference_count: int = 0  # images run
    execution_count: int = 0  # batches run
    last_inference_ms: int = 0
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))

    def request(self, ok: bool, seconds: float, queue_s: float | None, count: int = 1):
        """`count` requests that ended together, each after `seconds`."""
        (self.success if ok else self.fail).add(seconds * count, count)
        if queue_s is not None:
            self.queue.add(queue_s * count, count)

    def batch(self, requests: int, compute_s: float):
        self.inference_count += requests
        self.execution_count += 1
        self.compute.add(compute_s, requests)
        self.batches[requests].add(compute_s)
        self.last_inference_ms = int(time.time() * 1e3)
