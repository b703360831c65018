"""KServe v2's GRPCInferenceService: each RPC is the protocol's answer
(../kserve.py), or its failure as the call's status."""

from __future__ import annotations

from camserve.kserve import grpc_predict_v2_pb2 as kpb
from camserve.kserve import grpc_predict_v2_pb2_grpc as kpb_grpc

from ...pipeline.errors import failing_with_status
from ...pipeline.streams import completion_order
from ..kserve import KServe


class KServeService(kpb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, kserve: KServe):
        self.kserve = kserve
        self.process = kserve.registry.process

    async def ServerLive(self, request, context):
        return kpb.ServerLiveResponse(live=self.process.live)

    async def ServerReady(self, request, context):
        return kpb.ServerReadyResponse(ready=self.process.ready)

    @failing_with_status
    async def ModelReady(self, request, context):
        return kpb.ModelReadyResponse(ready=self.kserve.model_ready(request.name, request.version))

    async def ServerMetadata(self, request, context):
        return self.kserve.server_metadata()

    @failing_with_status
    async def ModelMetadata(self, request, context):
        return self.kserve.model_metadata(request.name, request.version)

    @failing_with_status
    async def ModelConfig(self, request, context):
        return self.kserve.model_config(request.name, request.version)

    @failing_with_status
    async def ModelStatistics(self, request, context):
        return self.kserve.model_statistics(request.name, request.version)

    @failing_with_status
    async def ModelInfer(self, request, context):
        return await self.kserve.infer(request, context, "kserve")

    async def ModelStreamInfer(self, request_iterator, context):
        async def infer_one(request):
            return kpb.ModelStreamInferResponse(infer_response=await self.kserve.infer(request, context, "kserve_stream"))

        def failed(request, failure):
            response = kpb.ModelInferResponse(model_name=request.model_name, id=request.id)
            return kpb.ModelStreamInferResponse(error_message=f"{failure.code.name}: {failure.message}", infer_response=response)

        async for response in completion_order(request_iterator, infer_one, failed, self.kserve.pipeline.limits.stream_window):
            yield response
