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
    # Which models (exactly one of the three; sources()): a repository and optionally some of its
    # models; one model's folder of VERSION/ folders under a name (TF Serving's --model_base_path
    # and --model_name); or TF Serving's models.config, read by the server process.
    repo: Path | None = None
    models: list[str] | None = None
    model_base_path: Path | None = None
    model_name: str = "default"  # TF Serving's default name
    model_config_file: Path | None = None
    model_config_poll_seconds: float = 0.0  # how often the models.config is looked at again; 0: read once
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

    def sources(self):
        """The models to serve (models/sources.py); a models.config is read here, in the server process."""
        from .models.sources import ConfigFileSources, FixedSources, ModelSource, RepoSources

        if self.model_config_file is not None:
            from .models import tfserving_config

            return ConfigFileSources(self.model_config_file, tfserving_config.load, self.model_config_poll_seconds)
        if self.model_base_path is not None:
            return FixedSources([ModelSource(self.model_name, Path(self.model_base_path))], str(self.model_base_path))
        if self.repo is None:
            raise ValueError("no models: give a repository, a model base path or a model config file")
        return RepoSources(self.repo, self.models)
