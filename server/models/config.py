"""Per-model configuration: `NAME/config.json` in the model repository, for what
TF Serving and Triton configure per model. Server flags give the defaults; a
file overrides some of them:

    {
      "max_batch_size": 16,
      "allowed_batch_sizes": [1, 4, 16],
      "batch_wait_ms": 2,
      "max_enqueued": 64,
      "version_policy": "latest" | "all" | {"specific": [1, 3]} | {"latest": 2},
      "default_method": "gradcam++",
      "warm_up": true,
      "batches_in_flight": 2
    }

JSON rather than Triton's protobuf text: the repository's other metadata
(camserve.json) is JSON, and it needs no dependency to read or write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..pipeline.batcher import BatchingOptions

FILE = "config.json"
KEYS = (
    "max_batch_size", "allowed_batch_sizes", "batch_wait_ms", "batch_timeout_ms", "max_enqueued", "version_policy", "default_method",
    "warm_up", "batches_in_flight",
)


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class VersionPolicy:
    kind: str = "latest"  # latest | all | specific
    versions: tuple[int, ...] = ()
    count: int = 1  # latest: how many of the newest versions (TF Serving's latest { num_versions })

    def __post_init__(self):
        if self.kind not in ("latest", "all", "specific"):
            raise ConfigError(f"version policy {self.kind!r} is not latest, all or specific")
        if self.kind == "specific" and not self.versions:
            raise ConfigError("the specific version policy needs the versions to serve")
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in self.versions):
            raise ConfigError(f"versions are positive integers, got {list(self.versions)}")
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 1:
            raise ConfigError(f"the latest policy serves at least 1 version, got {self.count!r}")
        if self.count != 1 and self.kind != "latest":
            raise ConfigError(f"a count of versions is the latest policy's, not {self.kind}'s")

    def choose(self, available: list[int]) -> set[int]:
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return set(available) & set(self.versions)
        return set(sorted(available)[-self.count :])


@dataclass(frozen=True)
class ModelConfig:
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    default_method: str | None = None  # None: the export's first method
    warm_up: bool = True  # compile every batch size before serving
    batches_in_flight: int = 0  # 0: 2 on a GPU (copy/compute overlap), 1 on a CPU


def path(repo, name: str) -> Path:
    return Path(repo) / name / FILE


def stamp(file: Path):
    """What tells a changed file from an unchanged one."""
    try:
        st = file.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def _number(values: dict, key: str, kind, low):
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, kind) or value < low:
        raise ConfigError(f"{key} must be a number >= {low}, got {value!r}")
    return value


def _policy(value) -> VersionPolicy:
    if isinstance(value, str):
        return VersionPolicy(value)
    if isinstance(value, dict) and set(value) == {"specific"} and isinstance(value["specific"], list):
        return VersionPolicy("specific", tuple(value["specific"]))
    if isinstance(value, dict) and set(value) == {"latest"}:
        return VersionPolicy("latest", count=value["latest"])
    raise ConfigError(f'version_policy is "latest", "all", {{"specific": [versions]}} or {{"latest": count}}, got {value!r}')


def parse(values, defaults: ModelConfig) -> ModelConfig:
    if not isinstance(values, dict):
        raise ConfigError("the file holds a JSON object")
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; keys are {', '.join(KEYS)}")
    batching = defaults.batching
    if "max_batch_size" in values:
        batching = replace(batching, max_batch_size=_number(values, "max_batch_size", int, 1), allowed_batch_sizes=())
    if "allowed_batch_sizes" in values:
        sizes = values["allowed_batch_sizes"]
        if not isinstance(sizes, list):
            raise ConfigError(f"allowed_batch_sizes is a list of batch sizes, got {sizes!r}")
        batching = replace(batching, allowed_batch_sizes=tuple(sizes))
    if "batch_timeout_ms" in values and "batch_wait_ms" in values:
        raise ConfigError("batch_timeout_ms is the old name of batch_wait_ms: give one of them")
    for key in ("batch_timeout_ms", "batch_wait_ms"):  # the old name, kept: files written for it still load
        if key in values:
            batching = replace(batching, batch_wait=_number(values, key, (int, float), 0) / 1e3)
    if "max_enqueued" in values:
        batching = replace(batching, max_enqueued=_number(values, "max_enqueued", int, 1))
    try:
        batching.check()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    policy = _policy(values["version_policy"]) if "version_policy" in values else defaults.policy
    method = values.get("default_method", defaults.default_method)
    if method is not None and not isinstance(method, str):
        raise ConfigError(f"default_method is a method name, got {method!r}")
    warm_up = values.get("warm_up", defaults.warm_up)
    if not isinstance(warm_up, bool):
        raise ConfigError(f"warm_up is true or false, got {warm_up!r}")
    in_flight = _number(values, "batches_in_flight", int, 1) if "batches_in_flight" in values else defaults.batches_in_flight
    return ModelConfig(batching, policy, method, warm_up, in_flight)


def load(file: Path, defaults: ModelConfig) -> ModelConfig:
    """The model's configuration: the defaults, overridden by its file when there is one."""
    if not file.exists():
        return defaults
    try:
        values = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read {file}: {err}") from None
    try:
        return parse(values, defaults)
    except ConfigError as err:
        raise ConfigError(f"{file}: {err}") from None
