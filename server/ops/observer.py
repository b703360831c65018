"""What serving reports, to its two sinks: the process's Prometheus metrics
(metrics.py; absent where a batcher runs alone, in tests) and each model's
statistics (KServe's ModelStatistics, models/statistics.py). The pipeline, the
batcher and the lifecycle call one observer and know neither sink."""

from __future__ import annotations


class ModelObserver:
    """One model's events."""

    __slots__ = ("name", "stats", "metrics")

    def __init__(self, name: str, stats, metrics=None):
        self.name, self.stats, self.metrics = name, stats, metrics

    def finished(self, api: str, code: str, seconds: float, queue_s: float | None, requests: int = 1):
        self.stats.request(code == "OK", seconds, queue_s, requests)
        if self.metrics:
            self.metrics.finished(self.name, api, code, seconds, queue_s, requests)

    def batch(self, images: int, padded: int, compute_s: float, signature: str):
        self.stats.batch(images, compute_s)
        if self.metrics:
            self.metrics.observe_batch(self.name, images, padded, compute_s, signature)

    def batch_failed(self, reason: str):
        if self.metrics:
            self.metrics.batch_failed(self.name, reason)

    def dropped(self, reason: str):
        if self.metrics:
            self.metrics.dropped(self.name, reason)

    def queue_depth(self, images: int):
        if self.metrics:
            self.metrics.queue_depth(self.name, images)


class Observer:
    def __init__(self, metrics=None):
        self.metrics = metrics

    def model(self, name: str, stats) -> ModelObserver:
        return ModelObserver(name, stats, self.metrics)

    def in_flight(self, calls: int):
        if self.metrics:
            self.metrics.in_flight.set(calls)

    def finished(self, model: ModelObserver | None, api: str, code: str, seconds: float, queue_s: float | None, requests: int = 1):
        """A call's end, answering `requests` requests; `model` None for one that named
        no served model: only served names become metric labels, so callers' typos do
        not grow the label set."""
        if model is not None:
            model.finished(api, code, seconds, queue_s, requests)
        elif self.metrics:
            self.metrics.finished("unknown", api, code, seconds, queue_s, requests)

    def version_state(self, model: str, version: int, state: str, states: tuple[str, ...]):
        if self.metrics:
            self.metrics.version_state(model, version, state, states)
