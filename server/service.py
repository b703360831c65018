"""The camserve.v1 gRPC service."""

from __future__ import annotations

import grpc

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

from .errors import abort, as_request_error
from .handler import Handler
from .models import Registry, ServedModel
from .streams import completion_order


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
        state="AVAILABLE",  # only warmed-up versions are in the registry
        tensorflow=meta.get("tensorflow", ""),
        keras=meta.get("keras", ""),
        head=model.head,
    )


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

        async def explain_one(request):
            try:
                return await self.handler.explain(request, context, "native_stream")
            except Exception as err:  # noqa: BLE001 - one request's failure travels in its response
                failure = as_request_error(err)
                return pb.ExplainResponse(id=request.id, error=pb.Error(code=failure.code.value[0], message=failure.message))

        async for response in completion_order(request_iterator, explain_one, self.handler.limits.stream_window):
            yield response

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[model_info(m) for m in self.registry.all()])

    async def GetModel(self, request, context):
        model = self.registry.find(request.model, request.version)
        if model is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} version {request.version or 'latest'} is not served here")
        return model_info(model)
