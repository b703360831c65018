"""The camserve.v1 gRPC service: its messages to the pipeline and back
(../native.py)."""

from __future__ import annotations

import functools

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

from ...models.registry import Registry
from ...pipeline.errors import RequestError, failing_with_status, invalid
from ...pipeline.explain import Job, Pipeline
from ...pipeline.streams import completion_order
from .. import native


class CamServeService(pb_grpc.CamServeServicer):
    def __init__(self, registry: Registry, pipeline: Pipeline):
        self.registry = registry
        self.pipeline = pipeline

    async def explain(self, request: pb.ExplainRequest, context, api: str) -> pb.ExplainResponse:
        return await self.pipeline.explain(
            request.model, request.version, native.image(request.image), native.options(request), context, api,
            functools.partial(native.response, request.id),
        )

    @failing_with_status
    async def Explain(self, request, context):
        return await self.explain(request, context, "native")

    async def ExplainStream(self, request_iterator, context):
        """Responses in completion order, each tagged with its request's id; a bad
        request answers with `error` and the stream goes on."""
        explain = functools.partial(self.explain, context=context, api="native_stream")
        async for response in completion_order(request_iterator, explain, native.failed, self.pipeline.limits.stream_window):
            yield response

    @failing_with_status
    async def ExplainMany(self, request, context):
        window = self.pipeline.limits.stream_window
        requests = request.requests
        if not 1 <= len(requests) <= window:
            raise invalid(f"ExplainMany carries 1 to {window} requests (the stream window); this one has {len(requests)}")
        jobs, answers = [], [None] * len(requests)
        for i, each in enumerate(requests):
            try:
                jobs.append((i, Job(each.model, each.version, native.image(each.image), native.options(each))))
            except RequestError as err:  # this request alone is malformed
                answers[i] = native.failed(each, err)
        indices = [i for i, _ in jobs]
        answered = await self.pipeline.explain_many(
            [job for _, job in jobs], context, "native_many",
            lambda k, explained: native.response(requests[indices[k]].id, explained),
            lambda k, failure: native.failed(requests[indices[k]], failure),
        )
        for i, answer in zip(indices, answered):
            answers[i] = answer
        return pb.ExplainManyResponse(responses=answers)

    async def ListModels(self, request, context):
        return native.list_models(self.registry)

    @failing_with_status
    async def GetModel(self, request, context):
        return native.get_model(self.registry, request.model, request.version)
