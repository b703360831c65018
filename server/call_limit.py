"""The limit on gRPC calls in flight (`--max-concurrent-rpcs`), counted here
rather than by grpc's `maximum_concurrent_rpcs`, which counts every call alike:
with the limit filled by long streams it refused health probes too, and a
probe refused three times restarts the pod and cuts off every caller. Health
checks and watches (and KServe's liveness and readiness calls) are never
counted nor refused; every other call counts from
its handler's start to its end (a stream once, while it is open), and the call
beyond the limit gets RESOURCE_EXHAUSTED before any work."""

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

_KINDS = {
    "unary_unary": grpc.unary_unary_rpc_method_handler,
    "unary_stream": grpc.unary_stream_rpc_method_handler,
    "stream_unary": grpc.stream_unary_rpc_method_handler,
    "stream_stream": grpc.stream_stream_rpc_method_handler,
}


class CallLimit(grpc.aio.ServerInterceptor):
    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        for kind, make in _KINDS.items():
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(self._counted(behavior), request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
        return handler

    async def _admit(self, context):
        if self.active >= self.limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.active} calls in flight, the server's limit (--max-concurrent-rpcs): retry later",
            )
        self.active += 1

    def _counted(self, behavior):
        if inspect.isasyncgenfunction(behavior):

            async def stream(request, context):
                await self._admit(context)
                try:
                    async for response in behavior(request, context):
                        yield response
                finally:
                    self.active -= 1

            return stream

        async def call(request, context):
            await self._admit(context)
            try:
                return await behavior(request, context)
            finally:
                self.active -= 1

        return call
