"""HTTP beside gRPC, on its own port and in the same event loop (aiohttp): KServe
v2 REST (kserve.py), explain by upload (upload.py) and the page at
`/` (page/). Every route calls the gRPC services' own methods, so HTTP shares
their admission, batchers, statuses and drain; this module only carries what
HTTP adds: TLS from the same files, the same bearer token, the same limits on
message size and calls in flight, and gRPC statuses as HTTP ones with an
`{"error": "..."}` body, as the Open Inference Protocol says; and Prometheus's
/metrics (also at TF Serving's /monitoring/prometheus/metrics)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST

from ...ops import phase
from ...pipeline.errors import RequestError, as_request_error
from ...pipeline.explain import Pipeline
from ..kserve import KServe
from ..tfserving import TFServing
from . import upload
from .kserve import routes as kserve_routes
from .tfserving import routes as tfserving_routes

PAGE = Path(__file__).parent / "page"
# A JSON tensor body takes up to about 10 times its size while it is parsed into Python
# lists and an array (binary tensors about once): JSON bodies get this share of the message
# limit, so that an HTTP call in flight holds no more than a gRPC call does (README, memory;
# measured by benchmarks/json_memory.py).
JSON_SHARE = 8
METRICS_PATHS = ("/metrics", "/monitoring/prometheus/metrics")  # Prometheus's, TF Serving's (--monitoring_config_file)
OPEN_PATHS = ("/v2/health/",)  # probes carry no secrets, as on gRPC
PUBLIC_FILES = {"/": "index.html", "/app.js": "app.js", "/style.css": "style.css"}  # the page asks for a token itself
# Routes outside the limit on calls in flight: a probe refused while the slots are full
# would restart a pod that is only busy, a scrape refused would hide the overload, and the
# page must load to show why. None reads a body.
UNCOUNTED = {
    "/v2/health/live", "/v2/health/ready", "/v2/models/{model}/ready", "/v2/models/{model}/versions/{version}/ready",
    *METRICS_PATHS, *PUBLIC_FILES,
}

STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class _CallersMistakes(logging.Filter):
    """aiohttp logs a request it cannot parse (a line too long, a byte a header may not
    hold, a body that does not decode) with its traceback at ERROR, and answers 400:
    the caller's mistake, which any caller could repeat to flood the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], (HttpProcessingError, web.RequestPayloadError)))


PROTOCOL_LOG = logging.getLogger("camserve.http")
PROTOCOL_LOG.addFilter(_CallersMistakes())


def error(status: int, message: str) -> web.Response:
    # A 401 names the scheme it wants, as HTTP asks.
    headers = {"WWW-Authenticate": 'Bearer realm="camserve"'} if status == 401 else None
    response = web.json_response({"error": message}, status=status, headers=headers)
    if status == 408:  # the rest of that body may still come: not a connection to read on
        response.force_close()
    return response


class HttpServer:
    def __init__(self, options, kserve: KServe, tfserving: TFServing, pipeline: Pipeline, metrics):
        self.options = options
        self.metrics = metrics
        self.process = kserve.registry.process
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.app = web.Application(
            client_max_size=options.max_message_bytes, middlewares=[self._errors, self._admit]
        )
        self.app.router.add_routes(kserve_routes(kserve, options.max_message_bytes // JSON_SHARE))
        self.app.router.add_routes(tfserving_routes(tfserving, options.max_message_bytes // JSON_SHARE))
        self.app.router.add_routes(upload.routes(kserve.registry, pipeline))
        for path in METRICS_PATHS:
            self.app.router.add_get(path, self._metrics)
        for path, name in PUBLIC_FILES.items():
            self.app.router.add_get(path, self._file(PAGE / name))
        self.runner: web.AppRunner | None = None

    @staticmethod
    def _file(path: Path):
        async def send(request):
            return web.FileResponse(path, headers={"Cache-Control": "no-cache"})

        return send

    async def _metrics(self, request):
        """Prometheus's scrape, behind the token when there is one (this port is public;
        --metrics-port stays open on its own address)."""
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @web.middleware
    async def _errors(self, request, handler):
        """Statuses as JSON errors, whoever raised them: our code, aiohttp (413 for
        an oversize body, 404/405 for unknown routes) or a bug (500, logged)."""
        try:
            return await handler(request)
        except RequestError as err:
            return error(err.http_status or STATUS.get(err.code, 500), err.message)
        except web.HTTPRequestEntityTooLarge:
            limit = self.options.max_message_bytes / 2**20
            return error(413, f"the request body is too large: the limit is {limit:g} MB (--max-message-mb), as on gRPC")
        except web.RequestPayloadError as err:  # a body that does not decode (its Content-Encoding, its chunks)
            reason = err.__cause__.message if isinstance(err.__cause__, HttpProcessingError) else str(err)
            return error(400, f"the request body cannot be read: {reason}")
        except web.HTTPException as err:
            if err.status < 400:
                raise
            return error(err.status, err.text or err.reason)
        except ConnectionError:  # the caller hung up: nobody to answer, nothing to log
            raise
        except Exception as err:  # noqa: BLE001 - a bug leaves as 500 with no trace
            return error(500, as_request_error(err).message)

    @web.middleware
    async def _admit(self, request, handler):
        """The bearer token, then the limit on calls in flight, both before the body
        is read; then the body's deadline, so a call holds its place only as long as
        its body may take to arrive and its answer to be computed."""
        path = request.path
        if self.options.security.token and not path.startswith(OPEN_PATHS) and path not in PUBLIC_FILES:
            # Header bytes that are not UTF-8 arrive as surrogates: encoded back, they are what was sent.
            sent = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
            if not self.options.security.authorized(sent):
                raise RequestError(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (Authorization header)")
        route = request.match_info.route.resource  # None for an unknown route
        if route is not None and route.canonical in UNCOUNTED:
            return await handler(request)
        if self.process.current == phase.STOPPING:  # before the body: the listener may close before it arrives
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica")
        if self.in_flight >= self.options.max_concurrent_rpcs:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{self.in_flight} calls in flight, the server's limit (--max-concurrent-rpcs): retry later")
        self.in_flight += 1
        self._idle.clear()
        try:
            return await self._body_in_time(request, handler)
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def wait_idle(self):
        """Once no counted call is in flight, its body's arrival included: the
        handler's own count starts only once a body is in, and a listener closed
        before then drops the rest of the body (aiohttp reads no more once it shuts)."""
        await self._idle.wait()

    async def _body_in_time(self, request, handler):
        """The handler, cut with 408 if the whole body has not arrived within
        --http-body-timeout (aiohttp bounds its size, not its time): a caller that
        stalls or trickles it holds its place no longer. The deadline ends when the
        body is in, so the model's own time is not counted."""
        limit = self.options.http_body_timeout
        timer = asyncio.timeout(limit)
        handling = True

        def arrived():  # also called once the handler is done, by a body it left unread
            if handling and not timer.expired():
                timer.reschedule(None)

        try:
            async with timer:
                request.content.on_eof(arrived)  # called at once when the body is already in
                return await handler(request)
        except TimeoutError:
            if not timer.expired():
                raise
            raise RequestError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"the request body did not arrive within {limit:g} s (--http-body-timeout)", http_status=408
            ) from None
        finally:
            handling = False

    async def start(self, host: str, port: int, shared: bool) -> int:
        """Listens; `shared`: the port is shared with the other workers (SO_REUSEPORT).
        Returns the port (port 0 picks a free one)."""
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, logger=PROTOCOL_LOG)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=self.options.security.ssl_context(), reuse_port=shared or None)
        await site.start()
        return self.runner.addresses[0][1]

    async def stop(self):
        if self.runner:
            await self.runner.cleanup()
