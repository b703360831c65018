"""Calls in flight, counted by outcome when they end: the drain waits for them,
the observer reports them (the metrics and each model's statistics)."""

from __future__ import annotations

import asyncio
import time

import grpc

from .deadlines import DEADLINE_SLACK_S
from .errors import RequestError


class Accounted:
    """One call; its API fills in the model and the queue time. A plain class: a
    generator context manager per call cost a tenth of a KServe call's time on
    the event loop (benchmarks/README.md)."""

    __slots__ = ("calls", "api", "context", "requests", "received", "model", "queue_s", "counted")

    def __init__(self, calls: Calls, api: str, context, requests: int):
        self.calls, self.api, self.context, self.requests = calls, api, context, requests
        self.received, self.model, self.queue_s = time.monotonic(), None, None
        self.counted = True  # False: the requests are answered again elsewhere (a block that falls back), counted there

    def __enter__(self) -> Accounted:
        self.calls._started(self.requests)
        return self

    def __exit__(self, kind, err, trace):
        if kind is None:
            code = grpc.StatusCode.OK
        elif isinstance(err, RequestError):
            code = err.code
        elif isinstance(err, asyncio.CancelledError):  # a call gRPC cancels at its deadline counts as DEADLINE_EXCEEDED
            remaining = self.context.time_remaining() if self.context is not None else None
            expired = remaining is not None and remaining <= DEADLINE_SLACK_S
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        else:
            code = grpc.StatusCode.INTERNAL
        self.calls._finished(self, code)
        return False


class Calls:
    def __init__(self, observer):
        self.observer = observer
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self):
        """Once no call is in flight."""
        await self._idle.wait()

    def accounted(self, api: str, context=None, requests: int = 1) -> Accounted:
        """`requests`: how many requests this call answers (a block of ExplainMany's)."""
        return Accounted(self, api, context, requests)

    def _started(self, requests: int):
        self.in_flight += requests
        self._idle.clear()
        self.observer.in_flight(self.in_flight)

    def _finished(self, call: Accounted, code: grpc.StatusCode):
        self.in_flight -= call.requests
        if not self.in_flight:
            self._idle.set()
        self.observer.in_flight(self.in_flight)
        if call.counted:
            model = call.model.observer if call.model else None
            self.observer.finished(model, call.api, code.name, time.monotonic() - call.received, call.queue_s, call.requests)
