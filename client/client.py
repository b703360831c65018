"""The thin Python client: `Client` (blocking) and `AsyncClient` (asyncio)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from typing import AsyncIterator, Iterable, Iterator

import grpc

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc

from .connection import Connection
from .messages import Explanation, explanation, request_message, request_options

WINDOW = 32  # images a stream keeps sent and unanswered


class _Base:
    def __init__(self, connection: Connection, model: str | None, timeout: float | None, aio: bool):
        self.connection = connection
        self.metadata = connection.metadata()
        self.model = model
        self.timeout = timeout
        self.channels = connection.channels(aio)
        self._stubs = itertools.cycle([pb_grpc.CamServeStub(channel) for channel in self.channels])

    @property
    def stub(self) -> pb_grpc.CamServeStub:
        """The next connection's stub: calls take the connections in turn."""
        return next(self._stubs)

    def _options(self, options: dict) -> pb.ExplainRequest:
        return request_options(**{**options, "model": options.get("model") or self.model})

    def _request(self, image, request_id="", **options) -> pb.ExplainRequest:
        return request_message(image, self._options(options), request_id)

    def _stream_options(self, options: dict, timeout: float | None) -> pb.ExplainRequest:
        return self._options({**options, "timeout": timeout or self.timeout})


def _requests(images: Iterable, options: pb.ExplainRequest, failed: deque) -> Iterator[pb.ExplainRequest]:
    """A request per image, read only when it is about to be sent; an image that
    cannot be read or turned into a request goes to `failed`, and the stream goes on."""
    for i, image in enumerate(images):
        try:
            yield request_message(image, options, str(i))
        except OSError as err:
            failed.append(Explanation(id=str(i), error=("UNREADABLE", str(err)), index=i))
        except (TypeError, ValueError) as err:  # pixels of the wrong type or shape
            failed.append(Explanation(id=str(i), error=("INVALID_ARGUMENT", str(err)), index=i))


def _drain(failed: deque) -> Iterator[Explanation]:
    while failed:
        yield failed.popleft()


def _calls(images: Iterable, options: pb.ExplainRequest, per_call: int, failed: deque) -> list[pb.ExplainManyRequest]:
    requests = list(_requests(images, options, failed))
    return [pb.ExplainManyRequest(requests=requests[i : i + per_call]) for i in range(0, len(requests), per_call)]


def _in_order(responses: Iterable[pb.ExplainManyResponse], failed: deque) -> list[Explanation]:
    answered = [explanation(r, index=int(r.id)) for response in responses for r in response.responses]
    return sorted([*answered, *failed], key=lambda e: e.index)


class Client(_Base):
    """Client("localhost:8500").explain("cat.jpg") -> Explanation.

    `target` is "host:port", a gRPC URI such as "dns:///camserve:8500", or a
    list of "host:port" to balance over round-robin. Connection options: tls,
    ca, cert, key (paths or PEM bytes; cert+key for mutual TLS), token (bearer),
    retries (of UNAVAILABLE, on another replica when there are several; whole
    messages up to max_message_mb are replayed), retry_overloaded (also retry
    RESOURCE_EXHAUSTED, with jittered backoff), health_check (gRPC client-side
    health checking: no new calls to a draining replica; default on),
    max_message_mb, connections (per target, taken in turn: a server with
    --workers gives each connection to one worker).

    Options of explain/explain_stream/explain_many: model, version, class_index (None: top-1),
    method (a name the model's metadata lists: "gradcam", "gradcam++", ...), top_k, heatmap_type ("float32",
    "uint8", "none": no heatmap, at the cost of a prediction), counterfactual (the map
    of what speaks against the class), top_k_maps (maps of the k highest classes in
    .maps), layer (one of GetModel's layers, or a fusion "mean"/"max"), original_size, resize ("stretch", "center_crop", "letterbox"),
    return_scores."""

    def __init__(self, target, *, model=None, timeout: float | None = 30.0, **connection):
        super().__init__(Connection(target, **connection), model, timeout, aio=False)

    def explain(self, image, *, timeout: float | None = None, **options) -> Explanation:
        response = self.stub.Explain(self._request(image, **options), timeout=timeout or self.timeout, metadata=self.metadata)
        return explanation(response)

    def predict(self, image, **options) -> Explanation:
        """The prediction alone (heatmap None, method ""): the server runs the
        model's predict signature, at the cost of a plain prediction."""
        return self.explain(image, heatmap_type="none", **options)

    def explain_stream(
        self, images: Iterable, *, timeout: float | None = None, window: int = WINDOW, **options
    ) -> Iterator[Explanation]:
        """Explanations in completion order; `.index` is the image's position, and
        a failed image yields an Explanation whose `.error` says why. At most
        `window` images are read and sent ahead of their answers; `timeout` is
        each image's own (default: the client's), the stream has none."""
        failed: deque[Explanation] = deque()
        requests = _requests(images, self._stream_options(options, timeout), failed)
        slots, closed = threading.Semaphore(window), threading.Event()

        def windowed():  # runs on gRPC's sending thread
            while slots.acquire() and not closed.is_set():
                request = next(requests, None)
                if request is None:
                    return
                yield request

        responses = self.stub.ExplainStream(windowed(), metadata=self.metadata)
        try:
            for response in responses:
                slots.release()
                yield from _drain(failed)
                yield explanation(response, index=int(response.id))
            yield from _drain(failed)
        finally:
            closed.set()
            slots.release()  # wakes the sending thread so that it sees `closed`
            responses.cancel()

    def explain_many(
        self, images: Iterable, *, per_call: int = 8, calls: int = 4, timeout: float | None = None, **options
    ) -> list[Explanation]:
        """Explanations in the images' order, `per_call` images to an ExplainMany call
        and up to `calls` calls in flight: the same work in fewer calls. A failed
        image's Explanation has `.error`; `timeout` is each call's. A failed call
        raises its error, and the calls still in flight are cancelled."""
        failed: deque[Explanation] = deque()
        pending, responses = deque(), []
        try:
            for request in _calls(images, self._options(options), per_call, failed):
                if len(pending) == calls:
                    responses.append(pending.popleft().result())
                pending.append(self.stub.ExplainMany.future(request, timeout=timeout or self.timeout, metadata=self.metadata))
            responses.extend(future.result() for future in pending)
        except BaseException:
            for future in pending:  # a failed call fails the whole: the server stops the rest
                future.cancel()
            raise
        return _in_order(responses, failed)

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self.metadata).models)

    def get_model(self, name: str, version: int = 0) -> pb.ModelInfo:
        return self.stub.GetModel(pb.GetModelRequest(model=name, version=version), timeout=self.timeout, metadata=self.metadata)

    def close(self):
        for channel in self.channels:
            channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncClient(_Base):
    """The asyncio twin of Client: the same methods, awaited."""

    def __init__(self, target, *, model=None, timeout: float | None = 30.0, **connection):
        super().__init__(Connection(target, **connection), model, timeout, aio=True)

    async def explain(self, image, *, timeout: float | None = None, **options) -> Explanation:
        response = await self.stub.Explain(self._request(image, **options), timeout=timeout or self.timeout, metadata=self.metadata)
        return explanation(response)

    async def predict(self, image, **options) -> Explanation:
        return await self.explain(image, heatmap_type="none", **options)

    async def explain_stream(
        self, images: Iterable, *, timeout: float | None = None, window: int = WINDOW, **options
    ) -> AsyncIterator[Explanation]:
        failed: deque[Explanation] = deque()
        requests = _requests(images, self._stream_options(options, timeout), failed)
        slots = asyncio.Semaphore(window)

        async def windowed():
            while await slots.acquire():
                request = next(requests, None)
                if request is None:
                    return
                yield request

        call = self.stub.ExplainStream(windowed(), metadata=self.metadata)
        try:
            async for response in call:
                slots.release()
                for failure in _drain(failed):
                    yield failure
                yield explanation(response, index=int(response.id))
            for failure in _drain(failed):
                yield failure
        finally:
            call.cancel()

    async def explain_many(
        self, images: Iterable, *, per_call: int = 8, calls: int = 4, timeout: float | None = None, **options
    ) -> list[Explanation]:
        failed: deque[Explanation] = deque()
        slots = asyncio.Semaphore(calls)

        async def call(request):
            async with slots:
                return await self.stub.ExplainMany(request, timeout=timeout or self.timeout, metadata=self.metadata)

        tasks = [asyncio.ensure_future(call(r)) for r in _calls(images, self._options(options), per_call, failed)]
        try:
            return _in_order(await asyncio.gather(*tasks), failed)
        except BaseException:
            for task in tasks:  # a failed call fails the whole: the server stops the rest
                task.cancel()
            raise

    async def list_models(self) -> list[pb.ModelInfo]:
        return list((await self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout, metadata=self.metadata)).models)

    async def get_model(self, name: str, version: int = 0) -> pb.ModelInfo:
        return await self.stub.GetModel(pb.GetModelRequest(model=name, version=version), timeout=self.timeout, metadata=self.metadata)

    async def close(self):
        for channel in self.channels:
            await channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
