"""The thin Python client: `Client` (blocking) and `AsyncClient` (asyncio)."""

from __future__ import annotations

import json
from typing import AsyncIterator, Iterable, Iterator

import grpc

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

from .messages import Explanation, explanation, request_message

SERVICE = "camserve.v1.CamServe"


def channel_options(max_message_mb: float, retries: int) -> list[tuple[str, object]]:
    """Message limits that match the server's, and gRPC's own retries of UNAVAILABLE
    (a server starting, draining or restarting) with backoff."""
    limit = int(max_message_mb * 1024 * 1024)
    policy = {
        "methodConfig": [
            {
                "name": [{"service": SERVICE}],
                "retryPolicy": {
                    "maxAttempts": retries + 1,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
    if retries:  # gRPC rejects a retry policy of fewer than 2 attempts
        options += [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(policy))]
    else:
        options += [("grpc.enable_retries", 0)]
    return options


class _Base:
    def __init__(self, model: str | None, timeout: float | None):
        self.model = model
        self.timeout = timeout

    def _request(self, image, request_id="", **options) -> pb.ExplainRequest:
        options["model"] = options.get("model") or self.model
        return request_message(image, request_id=request_id, **options)


class Client(_Base):
    """Client("localhost:8500").explain("cat.jpg") -> Explanation.

    Options of explain/explain_stream: model, version, class_index (None: top-1),
    method ("gradcam", "gradcam++", "guided"), top_k, heatmap_type ("float32",
    "uint8"), original_size, resize ("stretch", "center_crop", "letterbox"),
    return_scores."""

    def __init__(self, target: str, *, model=None, timeout: float | None = 30.0, retries: int = 3, max_message_mb=64):
        super().__init__(model, timeout)
        self.channel = grpc.insecure_channel(target, options=channel_options(max_message_mb, retries))
        self.stub = pb_grpc.CamServeStub(self.channel)

    def explain(self, image, *, timeout: float | None = None, **options) -> Explanation:
        response = self.stub.Explain(self._request(image, **options), timeout=timeout or self.timeout)
        return explanation(response)

    def explain_stream(self, images: Iterable, *, timeout: float | None = None, **options) -> Iterator[Explanation]:
        """Explanations in completion order; `.index` is the image's position, and
        a failed image yields an Explanation whose `.error` says why."""
        requests = (self._request(image, request_id=str(i), **options) for i, image in enumerate(images))
        for response in self.stub.ExplainStream(requests, timeout=timeout):
            yield explanation(response, index=int(response.id))

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout).models)

    def get_model(self, name: str, version: int = 0) -> pb.ModelInfo:
        return self.stub.GetModel(pb.GetModelRequest(model=name, version=version), timeout=self.timeout)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_Base):
    """The asyncio twin of Client: the same methods, awaited."""

    def __init__(self, target: str, *, model=None, timeout: float | None = 30.0, retries: int = 3, max_message_mb=64):
        super().__init__(model, timeout)
        self.channel = grpc.aio.insecure_channel(target, options=channel_options(max_message_mb, retries))
        self.stub = pb_grpc.CamServeStub(self.channel)

    async def explain(self, image, *, timeout: float | None = None, **options) -> Explanation:
        response = await self.stub.Explain(self._request(image, **options), timeout=timeout or self.timeout)
        return explanation(response)

    async def explain_stream(self, images: Iterable, *, timeout: float | None = None, **options) -> AsyncIterator[Explanation]:
        requests = (self._request(image, request_id=str(i), **options) for i, image in enumerate(images))
        async for response in self.stub.ExplainStream(requests, timeout=timeout):
            yield explanation(response, index=int(response.id))

    async def list_models(self) -> list[pb.ModelInfo]:
        return list((await self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout)).models)

    async def get_model(self, name: str, version: int = 0) -> pb.ModelInfo:
        return await self.stub.GetModel(pb.GetModelRequest(model=name, version=version), timeout=self.timeout)

    async def close(self):
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
