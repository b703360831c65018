"""The limit on gRPC calls in flight (`--max-concurrent-rpcs`), counted here
rather than by grpc's `maximum_concurrent_rpcs`, which counts every call alike:
with the limit filled by long streams it refused health probes too, and a
probe refused three times restarts the pod and cuts off every caller. Health
checks and watches (and KServe's liveness and readiness calls) are never
counted nor refused; every other call counts from its handler's start to its
end (a stream once, while it is open), and the call beyond the limit gets
RESOURCE_EXHAUSTED before any work.

"Before any work" includes reading the request: grpc reads and parses a unary
call's message before its handler runs, so a burst of large calls would all be
parsed only to be refused. Each method is therefore registered as taking a
stream of requests (the same bytes on the wire): the call is admitted first,
then its one message is read."""

from __future__ import annotations

import inspect

import grpc

from ...pipeline.errors import RequestError, fail

# Probes: grpc.health.v1 (Kubernetes' gRPC probes, load balancers) and KServe's own.
EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ModelReady",
)


class CallLimit(grpc.aio.ServerInterceptor):
    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        codecs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
        if handler.unary_unary:
            return grpc.stream_unary_rpc_method_handler(self._counted(handler.unary_unary, one=True), **codecs)
        if handler.unary_stream:
            return grpc.stream_stream_rpc_method_handler(self._counted(handler.unary_stream, one=True), **codecs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._counted(handler.stream_unary, one=False), **codecs)
        return grpc.stream_stream_rpc_method_handler(self._counted(handler.stream_stream, one=False), **codecs)

    def _admit(self, context) -> bool:
        """Counts the call in, or refuses it (its status set) when the limit is full."""
        if self.active >= self.limit:
            fail(context, RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.active} calls in flight, the server's limit (--max-concurrent-rpcs): retry later",
            ))
            return False
        self.active += 1
        return True

    def _counted(self, behavior, one: bool):
        """`behavior` counted; `one`: it takes a single request, read once admitted.
        A refused call's status is set by fail() and the wrapper returns: nothing
        yielded for a response stream, None for a unary response."""

        async def request(requests, context):
            """behavior's argument, or EOF (its status set) for a call without its one message."""
            if not one:
                return requests
            message = await context.read()
            if message is grpc.aio.EOF:
                fail(context, RequestError(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message"))
            return message

        if inspect.isasyncgenfunction(behavior):

            async def stream(requests, context):
                if not self._admit(context):
                    return
                try:
                    argument = await request(requests, context)
                    if argument is grpc.aio.EOF:
                        return
                    async for response in behavior(argument, context):
                        yield response
                finally:
                    self.active -= 1

            return stream

        async def call(requests, context):
            if not self._admit(context):
                return None
            try:
                argument = await request(requests, context)
                if argument is grpc.aio.EOF:
                    return None
                return await behavior(argument, context)
            finally:
                self.active -= 1

        return call
