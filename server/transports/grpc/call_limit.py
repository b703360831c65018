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

    async def _admit(self, context):
        if self.active >= self.limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.active} calls in flight, the server's limit (--max-concurrent-rpcs): retry later",
            )
        self.active += 1

    def _counted(self, behavior, one: bool):
        """`behavior` counted; `one`: it takes a single request, read once admitted."""

        async def request(requests, context):
            if not one:
                return requests
            message = await context.read()
            if message is grpc.aio.EOF:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message")
            return message

        if inspect.isasyncgenfunction(behavior):

            async def stream(requests, context):
                await self._admit(context)
                try:
                    async for response in behavior(await request(requests, context), context):
                        yield response
                finally:
                    self.active -= 1

            return stream

        async def call(requests, context):
            await self._admit(context)
            try:
                return await behavior(await request(requests, context), context)
            finally:
                self.active -= 1

        return call
