"""What the gRPC services read of a call's context, for a call that came over
HTTP: its deadline and abort(), so the services' methods answer HTTP too."""

from __future__ import annotations

import time

import grpc

from .errors import RequestError


class Context:
    def __init__(self, timeout_s: float | None = None):
        self.ends = time.monotonic() + timeout_s if timeout_s is not None else None

    def time_remaining(self) -> float | None:
        return None if self.ends is None else self.ends - time.monotonic()

    async def abort(self, code: grpc.StatusCode, message: str):
        raise RequestError(code, message)
