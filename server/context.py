"""What the gRPC services read of a call's context, for a call that came over
HTTP: its deadline (none) and abort(), so the services' methods answer HTTP too."""

from __future__ import annotations

import grpc

from .errors import RequestError


class Context:
    """HTTP has no call deadline; a request's own (KServe's `timeout`, explain's
    `timeout_ms`) travels in the request, as on gRPC."""

    def time_remaining(self) -> None:
        return None

    async def abort(self, code: grpc.StatusCode, message: str):
        raise RequestError(code, message)
