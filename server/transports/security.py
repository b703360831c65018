"""Transport security and caller authentication.

TLS from a certificate and key; mutual TLS when a client CA is given (callers
must present a certificate it signed); a bearer token checked on every call
except health checks, which load balancers and probes make without secrets.
The token is compared in constant time.
"""

from __future__ import annotations

import hmac
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from ..pipeline.errors import RequestError, fail

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
TOKEN_ENV = "CAMSERVE_AUTH_TOKEN"


@dataclass(frozen=True)
class SecurityOptions:
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None  # mutual TLS
    token: str | None = None

    @classmethod
    def from_args(cls, tls_cert, tls_key, client_ca, token_file) -> SecurityOptions:
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if client_ca and not tls_cert:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        token = Path(token_file).read_text().strip() if token_file else os.environ.get(TOKEN_ENV)
        if token_file and not token:
            raise ValueError(f"{token_file} is empty")
        return cls(tls_cert, tls_key, client_ca, token or None)

    def authorized(self, sent: bytes) -> bool:
        """Whether an Authorization header's bytes (gRPC metadata or HTTP) carry the
        token; always, when no token is asked for."""
        return not self.token or hmac.compare_digest(sent, f"Bearer {self.token}".encode())

    def credentials(self) -> grpc.ServerCredentials | None:
        """gRPC's TLS."""
        if not self.tls_cert:
            return None
        pair = (Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())
        ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)

    def ssl_context(self) -> ssl.SSLContext | None:
        """HTTP's TLS, from the same files."""
        if not self.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls_cert, self.tls_key)
        if self.client_ca:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [BearerToken(self)] if self.token else []


def _refuse(context):
    fail(context, RequestError(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token (authorization metadata)"))


async def _deny_unary(request_or_iterator, context):
    """A unary response: the status alone, nothing returned."""
    _refuse(context)


async def _deny_stream(request_or_iterator, context):
    """A response stream: the status alone, nothing yielded."""
    _refuse(context)
    return
    yield  # an async generator


def _deny(handler):
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""
    kinds = {
        "unary_unary": (grpc.unary_unary_rpc_method_handler, _deny_unary),
        "unary_stream": (grpc.unary_stream_rpc_method_handler, _deny_stream),
        "stream_unary": (grpc.stream_unary_rpc_method_handler, _deny_unary),
        "stream_stream": (grpc.stream_stream_rpc_method_handler, _deny_stream),
    }
    for kind, (make, deny) in kinds.items():
        if getattr(handler, kind):
            return make(deny, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    return None


class BearerToken(grpc.aio.ServerInterceptor):
    def __init__(self, security: SecurityOptions):
        self.security = security

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        if self.security.authorized(sent.encode() if isinstance(sent, str) else sent):
            return handler
        return _deny(handler)
