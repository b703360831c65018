"""What `camserve serve` was asked for; no TensorFlow here, so the supervisor of
--workers can hold it (ops/workers.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .models.config import ModelConfig
from .pipeline.limits import Limits
from .transports.security import SecurityOptions


@dataclass
class ServerOptions:
    repo: Path
    models: list[str] | None = None
    model_defaults: ModelConfig = field(default_factory=ModelConfig)  # what a model's config.json may override
    security: SecurityOptions = field(default_factory=SecurityOptions)
    poll_seconds: float = 5.0  # how often the repository is checked for versions; 0: never
    host: str = "0.0.0.0"
    port: int = 8500
    http_port: int = 0  # KServe v2 REST, explain by upload and the page; 0: no HTTP (`serve` defaults it to 8000)
    metrics_port: int = 8501  # 0: no metrics endpoint
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 where Prometheus scrapes from outside the pod
    limits: Limits = field(default_factory=Limits)
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_rpcs: int = 1000  # beyond: RESOURCE_EXHAUSTED from gRPC before any work
    http_body_timeout: float = 30.0  # seconds an HTTP request's body may take to arrive (408 beyond)
    # Connections are closed (after a grace) this often, so clients re-resolve and new replicas get traffic.
    max_connection_age: float = 300.0
    max_connection_age_grace: float = 30.0
    # Thread counts; 0: the CPUs this process may use (affinity and cgroup quota, not the node's cores).
    decode_threads: int = 0
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    shutdown_delay: float = 1.0  # keep answering after SIGTERM so balancers see NOT_SERVING
    drain_timeout: float = 30.0
