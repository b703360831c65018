"""Prometheus metrics, served over HTTP on their own port and at /metrics on the
HTTP port. With --workers each worker writes its own (prometheus-client's
multiprocess mode) and both endpoints serve their sum: gauges sum over the live
workers."""

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def summed_registry() -> CollectorRegistry:
    """A registry that reads every worker's metrics files and sums them."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


class Metrics:
    def __init__(self, worker: str = "0"):
        self.registry = CollectorRegistry()
        # Under --workers (multiprocess mode) a scrape reads every worker's files.
        self._scraped = summed_registry() if "PROMETHEUS_MULTIPROC_DIR" in os.environ else self.registry
        self.worker = worker
        self._children: dict = {}
        r = self.registry
        self.requests = Counter(
            "camserve_requests", "Requests by model, API and gRPC status code", ["model", "api", "code"], registry=r
        )
        self.latency = Histogram(
            "camserve_request_latency_seconds", "Arrival to response", ["model", "api"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_time = Histogram(
            "camserve_queue_seconds", "Time waiting for a batch", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.compute_time = Histogram(
            "camserve_compute_seconds", "Model run time per batch", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "camserve_batch_size", "Requests per batch, before padding", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batches = Counter(
            "camserve_batches", "Model runs, by signature (explain: with heatmaps; predict: none asked for one)",
            ["model", "signature"], registry=r,
        )
        self.padding = Counter("camserve_padding_slots", "Batch slots filled with padding", ["model"], registry=r)
        self.executed = Counter("camserve_executed_requests", "Requests that ran on the model", ["model"], registry=r)
        self.batch_failures = Counter(
            "camserve_batch_failures", "Model runs that raised, by exception type", ["model", "reason"], registry=r
        )
        self.drops = Counter(
            "camserve_dropped_requests", "Requests dropped before running", ["model", "reason"], registry=r
        )
        summed = "livesum"
        self.depth = Gauge("camserve_queue_depth", "Requests waiting for a batch", ["model"], registry=r, multiprocess_mode=summed)
        self.in_flight = Gauge(
            "camserve_in_flight_requests", "Calls being handled, from arrival to response", registry=r, multiprocess_mode=summed
        )
        self.version_states = Gauge(
            "camserve_model_version_state", "Workers (1 without --workers) with each model version in each state",
            ["model", "version", "state"], registry=r, multiprocess_mode=summed,
        )
        self.loop_lag = Gauge(
            "camserve_event_loop_lag_seconds", "Worst lag of the event loop over the last 5 s (loop_lag.py)",
            registry=r, multiprocess_mode="livemax",
        )
        self.worker_calls = Counter("camserve_worker_calls", "Calls answered, by worker process (--workers)", ["worker"], registry=r)

    def serve(self, port: int, host: str = "127.0.0.1"):
        start_http_server(port, addr=host, registry=self.registry)

    def exposition(self) -> bytes:
        """The text Prometheus scrapes: every worker's sum under --workers."""
        return generate_latest(self._scraped)

    def _child(self, metric, *labels):
        """metric.labels(*labels), looked up once: labels() validates and locks on every call."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_batch(self, model: str, requests: int, padded_size: int, compute_s: float, signature: str):
        self._child(self.batches, model, signature).inc()
        self._child(self.batch_size, model).observe(requests)
        self._child(self.padding, model).inc(padded_size - requests)
        self._child(self.executed, model).inc(requests)
        self._child(self.compute_time, model).observe(compute_s)

    def version_state(self, model: str, version: int, state: str, states: tuple[str, ...]):
        for each in states:
            self.version_states.labels(model, str(version), each).set(1 if each == state else 0)

    def batch_failed(self, model: str, reason: str):
        self.batch_failures.labels(model, reason).inc()

    def dropped(self, model: str, reason: str):
        self.drops.labels(model, reason).inc()

    def queue_depth(self, model: str, depth: int):
        self._child(self.depth, model).set(depth)

    def finished(self, model: str, api: str, code: str, latency_s: float, queue_s: float | None, requests: int = 1):
        """`requests` requests that ended together (a block of ExplainMany's), each counted."""
        self._child(self.worker_calls, self.worker).inc(requests)
        self._child(self.requests, model, api, code).inc(requests)
        latency, queue = self._child(self.latency, model, api), self._child(self.queue_time, model) if queue_s is not None else None
        for _ in range(requests):
            latency.observe(latency_s)
            if queue:
                queue.observe(queue_s)
