"""`camserve serve --model-config-file FILE`: TF Serving's ModelServerConfig in
protobuf text format (its --model_config_file), read into model sources
(sources.py):

    model_config_list {
      config {
        name: "a"
        base_path: "/models/a"
        model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
    }

Honoured: name, base_path, model_platform ("tensorflow"), model_version_policy
(latest { num_versions }, all {}, specific { versions }) and version_labels.
Refused with a message, never ignored: custom_model_config, logging_config, a
platform other than TensorFlow, a base path that is relative (TF Serving's rule
without --model_config_list_root_dir) or a URI, a name listed twice, a label on a
version the specific policy never loads. Where camserve is laxer: a missing
model_platform is taken as "tensorflow" (TF Serving refuses the file).

The file is read at start, and again when it changes under
--model-config-file-poll-seconds (TF Serving's --model_config_file_poll_wait_seconds;
sources.ConfigFileSources); each model's VERSION/ folders are watched (--poll-seconds).
The config protos import without TensorFlow (only tensorflow_serving.apis
needs it), so the command line checks the file before anything starts."""

from __future__ import annotations

import re
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from .config import ConfigError, VersionPolicy
from .sources import ModelSource

PLATFORM = "tensorflow"


def _line(text: str, name: str) -> str:
    """Where the model named `name` is written, for a message: "line N" or ""."""
    for number, line in enumerate(text.splitlines(), 1):
        if re.search(r"\bname\s*:\s*([\"'])" + re.escape(name) + r"\1", line):
            return f"line {number}"
    return ""


def _policy(config) -> VersionPolicy | None:
    """None when the file gives no policy: the flags' (or config.json's) then, latest by default as in TF Serving."""
    if not config.HasField("model_version_policy"):
        return None
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "latest":
        return VersionPolicy("latest", count=max(policy.latest.num_versions, 1))  # 0: proto3's unset, TF Serving's 1
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", tuple(policy.specific.versions))
    return None  # an empty model_version_policy {}: TF Serving's default, latest


def parse(text: str, file: str = "models.config") -> list[ModelSource]:
    """The models a ModelServerConfig text lists; ConfigError naming `file` and the line otherwise."""
    message = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:  # its text starts "LINE:COLUMN : "
        raise ConfigError(f"{file}:{err}") from None
    if message.HasField("custom_model_config"):
        raise ConfigError(f"{file}: custom_model_config is TF Serving's plug-in point; camserve serves model_config_list only")
    if not message.model_config_list.config:
        raise ConfigError(f"{file}: model_config_list lists no model")
    sources, seen = [], set()
    for config in message.model_config_list.config:
        line = _line(text, config.name) if config.name else ""
        where = f"{file}: model {config.name!r}" + (f" ({line})" if line else "")
        if not config.name:
            raise ConfigError(f"{file}: a config has no name")
        if config.name in seen:  # TF Serving's words
            raise ConfigError(f"{where}: Illegal to list model {config.name} multiple times in config list")
        seen.add(config.name)
        base = config.base_path
        if not base:
            raise ConfigError(f"{where}: base_path is missing")
        if "://" in base:
            raise ConfigError(f"{where}: base_path {base!r} is a URI; camserve reads local folders only")
        if not Path(base).is_absolute():  # TF Serving's rule and words (without --model_config_list_root_dir)
            raise ConfigError(
                f"{where}: Expected model {config.name} to have an absolute path or URI; got base_path()={base} "
                "(TF Serving takes base paths as absolute, not relative to the config file)"
            )
        if config.model_type not in (model_server_config_pb2.MODEL_TYPE_UNSPECIFIED, model_server_config_pb2.TENSORFLOW):
            raise ConfigError(f"{where}: model_type {model_server_config_pb2.ModelType.Name(config.model_type)} is not TensorFlow")
        if config.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED and config.model_platform:
            raise ConfigError(f"{where}: Illegal setting both ModelServerConfig::model_type (deprecated) and ModelServerConfig::model_platform.")
        if config.model_platform not in ("", PLATFORM):
            raise ConfigError(f"{where}: model_platform {config.model_platform!r}: camserve serves {PLATFORM!r} SavedModels only")
        if config.HasField("logging_config"):
            raise ConfigError(f"{where}: logging_config (request logging) is not something camserve does; remove it")
        try:
            policy = _policy(config)
        except ConfigError as err:
            raise ConfigError(f"{where}: model_version_policy: {err}") from None
        labels = dict(config.version_labels)
        for label, version in sorted(labels.items()):
            if not label:
                raise ConfigError(f"{where}: a version label has no name")
            if version < 1:
                raise ConfigError(f"{where}: version label {label!r} names version {version}; versions are positive")
            if policy and policy.kind == "specific" and version not in policy.versions:
                raise ConfigError(
                    f"{where}: version label {label!r} names version {version}, which its specific policy "
                    f"({', '.join(map(str, policy.versions))}) never loads"
                )
        sources.append(ModelSource(config.name, Path(base), policy, labels))
    return sources


def load(path) -> list[ModelSource]:
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read --model-config-file {path}: {err}") from None
    return parse(text, str(path))
