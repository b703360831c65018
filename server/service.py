"""The camserve.v1 gRPC service."""

from __future__ import annotations

import asyncio
import functools

import grpc

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

from .errors import abort, invalid
from .handler import Handler
from .models import AVAILABLE, LOADING, UNAVAILABLE, Registry, ServedModel
from .streams import answered, completion_order


def model_info(model: ServedModel) -> pb.ModelInfo:
    meta = model.metadata
    return pb.ModelInfo(
        name=model.name,
        version=model.version,
        input_height=model.height,
        input_width=model.width,
        preprocess=meta["preprocess"],
        target_layer=meta["target_layer"],
        feature_height=meta["feature_size"][0],
        feature_width=meta["feature_size"][1],
        methods=model.methods,
        classes=model.classes,
        num_classes=model.num_classes,
        device=model.device,
        batch_sizes=list(model.batcher.ladder),
        state=AVAILABLE,  # only warmed-up versions are in the registry
        tensorflow=meta.get("tensorflow", ""),
        keras=meta.get("keras", ""),
        head=model.head,
        layers=model.layers,
        fusions=model.fusions,
    )


def _failed(request: pb.ExplainRequest, failure) -> pb.ExplainResponse:
    """One request's failure as its response, in streams and ExplainMany."""
    return pb.ExplainResponse(id=request.id, error=pb.Error(code=failure.code.value[0], message=failure.message))


class CamServeService(pb_grpc.CamServeServicer):
    def __init__(self, registry: Registry, handler: Handler):
        self.registry = registry
        self.handler = handler

    async def Explain(self, request, context):
        try:
            return await self.handler.explain(request, context, "native")
        except Exception as err:  # noqa: BLE001 - every failure leaves as a status
            await abort(context, err)

    async def ExplainStream(self, request_iterator, context):
        """Responses in completion order, each tagged with its request's id; a bad
        request answers with `error` and the stream goes on."""

        explain = functools.partial(self.handler.explain, context=context, api="native_stream")
        async for response in completion_order(request_iterator, explain, _failed, self.handler.limits.stream_window):
            yield response

    async def ExplainMany(self, request, context):
        try:
            window = self.handler.limits.stream_window
            if not 1 <= len(request.requests) <= window:
                raise invalid(f"ExplainMany carries 1 to {window} requests (the stream window); this one has {len(request.requests)}")
            explain = functools.partial(self.handler.explain, context=context, api="native_many")
            responses = await asyncio.gather(*(answered(explain, r, _failed) for r in request.requests))
            return pb.ExplainManyResponse(responses=responses)
        except Exception as err:  # noqa: BLE001 - every failure leaves as a status
            await abort(context, err)

    async def ListModels(self, request, context):
        """The served versions, then those loading or refused."""
        others = [
            pb.ModelInfo(name=name, version=version, state=s.state, state_reason=s.reason)
            for (name, version), s in sorted(self.registry.states.items())
            if s.state in (LOADING, UNAVAILABLE) and self.registry.find(name, version) is None
        ]
        return pb.ListModelsResponse(models=[model_info(m) for m in self.registry.all()] + others)

    async def GetModel(self, request, context):
        if request.version < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"version {request.version} is not a version number")
        model = self.registry.find(request.model, request.version)
        if model is not None:
            return model_info(model)
        known = sorted((v, s) for (n, v), s in self.registry.states.items() if n == request.model)
        matches = [(v, s) for v, s in known if v == request.version] if request.version else known[-1:]
        if not matches:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} version {request.version or 'latest'} is not served here")
        version, state = matches[0]
        return pb.ModelInfo(name=request.model, version=version, state=state.state, state_reason=state.reason)
