"""The thin Python client: `Client` (blocking) and `AsyncClient` (asyncio)."""

from __future__ import annotations

from typing import AsyncIterator, Iterable, Iterator

import grpc

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

from .connection import Connection
from .messages import Explanation, explanation, request_message

class _Base:
    def __init__(self, connection: Connection, model: str | None, timeout: float | None):
        self.connection = connection
        self.metadata = connection.metadata()
        self.model = model
        self.timeout = timeout

    def _request(self, image, request_id="", **options) -> pb.ExplainRequest:
        options["model"] = options.get("model") or self.model
        return request_message(image, request_id=request_id, **options)


class Client(_Base):
    """Client("localhost:8500").explain("cat.jpg") -> Explanation.

    `target` is "host:port", a gRPC URI such as "dns:///camserve:8500", or a
    list of "host:port" to balance over round-robin. Connection options: tls,
    ca, cert, key (paths or PEM bytes; cert+key for mutual TLS), token (bearer),
    retries (of UNAVAILABLE, on another replica when there are several),
    max_message_mb.

    Options of explain/explain_stream: model, version, class_index (None: top-1),
    method ("gradcam", "gradcam++", "guided"), top_k, heatmap_type ("float32",
    "uint8"), original_size, resize ("stretch", "center_crop", "letterbox"),
    return_scores."""

    def __init__(self, target, *, model=None, timeout: float | None = 30.0, **connection):
        super().__init__(Connection(target, **connection), model, timeout)
        self.channel = self.connection.channel()
        self.stub = pb_grpc.CamServeStub(self.channel)

    def explain(self, image, *, timeout: float | None = None, **options) -> Explanation:
        response = self.stub.Explain(self._request(image, **options), timeout=timeout or self.timeout, metadata=self.metadata)
        return explanation(response)

    def explain_stream(self, images: Iterable, *, timeout: float | None = None, **options) -> Iterator[Explanation]:
        """Explanations in completion order; `.index` is the image's position, and
        a failed image yields an Explanation whose `.error` says why."""
        requests = (self._request(image, request_id=str(i), **options) for i, image in enumerate(images))
        for response in self.stub.ExplainStream(requests, timeout=timeout, metadata=self.metadata):
            yield explanation(response, index=int(response.id))

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self.metadata).models)

    def get_model(self, name: str, version: int = 0) -> pb.ModelInfo:
        return self.stub.GetModel(pb.GetModelRequest(model=name, version=version), timeout=self.timeout, metadata=self.metadata)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_Base):
    """The asyncio twin of Client: the same methods, awaited."""

    def __init__(self, target, *, model=None, timeout: float | None = 30.0, **connection):
        super().__init__(Connection(target, **connection), model, timeout)
        self.channel = self.connection.aio_channel()
        self.stub = pb_grpc.CamServeStub(self.channel)

    async def explain(self, image, *, timeout: float | None = None, **options) -> Explanation:
        response = await self.stub.Explain(self._request(image, **options), timeout=timeout or self.timeout, metadata=self.metadata)
        return explanation(response)

    async def explain_stream(self, images: Iterable, *, timeout: float | None = None, **options) -> AsyncIterator[Explanation]:
        requests = (self._request(image, request_id=str(i), **options) for i, image in enumerate(images))
        async for response in self.stub.ExplainStream(requests, timeout=timeout, metadata=self.metadata):
            yield explanation(response, index=int(response.id))

    async def list_models(self) -> list[pb.ModelInfo]:
        return list((await self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self.metadata)).models)

    async def get_model(self, name: str, version: int = 0) -> pb.ModelInfo:
        return await self.stub.GetModel(pb.GetModelRequest(model=name, version=version), timeout=self.timeout, metadata=self.metadata)

    async def close(self):
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
