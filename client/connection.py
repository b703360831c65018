"""How a client reaches one server or several: message limits, TLS (mutual
when a client certificate is given), a bearer token, round-robin balancing
over replicas, gRPC's client-side health checking (a draining or broken
replica gets no new calls), and gRPC's own retries of UNAVAILABLE, which on a
balanced channel land on another replica. Retries replay the request from a
buffer sized to the message limit, so a large image is retried too (gRPC's
default buffer is 256 KiB). Retrying RESOURCE_EXHAUSTED (an overloaded
replica) is opt-in; gRPC's retry backoff is randomised (jitter)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

import grpc

SERVICES = ("camserve.v1.CamServe", "inference.GRPCInferenceService")


def _read(value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


@dataclass(frozen=True)
class Connection:
    target: str | list[str]  # "host:port", a gRPC URI ("dns:///name:port"), or several "host:port"
    tls: bool = False
    ca: str | Path | bytes | None = None  # PEM roots to trust (default: the system's)
    cert: str | Path | bytes | None = None  # client certificate, for mutual TLS
    key: str | Path | bytes | None = None
    token: str | None = None
    retries: int = 3
    retry_overloaded: bool = False  # also retry RESOURCE_EXHAUSTED, with backoff
    health_check: bool = True  # gRPC client-side health checking of each replica
    max_message_mb: float = 64
    # Connections per target: a server running --workers gives each connection to one
    # worker, so one client reaches several workers only through several connections.
    connections: int = 1

    @property
    def secure(self) -> bool:
        return self.tls or any(v is not None for v in (self.ca, self.cert, self.key))

    def address(self) -> str:
        """Several host:port become one ipv4/ipv6 target that gRPC balances over."""
        if isinstance(self.target, str):
            return self.target
        ips = []
        for item in self.target:
            host, port = item.rsplit(":", 1)
            family, *_, sockaddr = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)[0]
            ips.append(f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6 else f"{sockaddr[0]}:{port}")
        scheme = "ipv6" if all(ip.startswith("[") for ip in ips) else "ipv4"
        return f"{scheme}:{','.join(ips)}"

    def options(self) -> list[tuple[str, object]]:
        limit = int(self.max_message_mb * 1024 * 1024)
        config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
        if self.health_check:  # readiness: the service name "" turns NOT_SERVING on drain
            config["healthCheckConfig"] = {"serviceName": ""}
        if self.retries:  # gRPC rejects a retry policy of fewer than 2 attempts
            config["methodConfig"] = [
                {
                    "name": [{"service": s} for s in SERVICES],
                    "retryPolicy": {
                        "maxAttempts": self.retries + 1,
                        "initialBackoff": "0.1s",
                        "maxBackoff": "2s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE", *(["RESOURCE_EXHAUSTED"] if self.retry_overloaded else [])],
                    },
                }
            ]
        return [
            # Channels share connections to the same address unless each has its own pool.
            ("grpc.use_local_subchannel_pool", 1 if self.connections > 1 else 0),
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.enable_retries", 1 if self.retries else 0),
            # Room to replay one whole message per call, and a few calls' worth per channel.
            ("grpc.per_rpc_retry_buffer_size", limit),
            ("grpc.retry_buffer_size", 4 * limit),
            ("grpc.service_config", json.dumps(config)),
        ]

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(_read(self.ca), _read(self.key), _read(self.cert))

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channels(self, aio: bool) -> list:
        if self.connections < 1:
            raise ValueError(f"connections must be at least 1, got {self.connections}")
        return [self.aio_channel() if aio else self.channel() for _ in range(self.connections)]

    def channel(self) -> grpc.Channel:
        if self.secure:
            return grpc.secure_channel(self.address(), self.credentials(), options=self.options())
        return grpc.insecure_channel(self.address(), options=self.options())

    def aio_channel(self) -> grpc.aio.Channel:
        if self.secure:
            return grpc.aio.secure_channel(self.address(), self.credentials(), options=self.options())
        return grpc.aio.insecure_channel(self.address(), options=self.options())


def add_arguments(parser):
    """The connection flags shared by the client commands."""
    parser.add_argument("--tls", action="store_true", help="connect over TLS (system roots unless --ca)")
    parser.add_argument("--ca", type=Path, help="PEM roots to trust")
    parser.add_argument("--cert", type=Path, help="client certificate, for mutual TLS")
    parser.add_argument("--key", type=Path, help="client private key, for mutual TLS")
    parser.add_argument("--token-file", type=Path, help="bearer token file (default: $CAMSERVE_TOKEN)")
    parser.add_argument(
        "--connections", type=int, default=1, help="connections per server, used in turn (a server's --workers each take whole connections)"
    )


def from_arguments(args) -> dict:
    """Client keyword arguments from add_arguments' flags."""
    import os

    token = args.token_file.read_text().strip() if args.token_file else os.environ.get("CAMSERVE_TOKEN")
    return {"tls": args.tls, "ca": args.ca, "cert": args.cert, "key": args.key, "token": token or None, "connections": args.connections}
