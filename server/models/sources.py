"""Where the served models come from: each model is a name and a base path, a
folder of VERSION/ folders (TF Serving's base_path), with, from a TF Serving
models.config, its own version policy and version labels. Three ways to say so,
one shape for the lifecycle (lifecycle.py):
- `--repo DIR`: every folder of DIR, or the `--model` names, looked up each pass,
  so a model folder added later is served;
- `--model-base-path DIR --model-name NAME`: one model (TF Serving's one-model start);
- `--model-config-file FILE`: its list (tfserving_config.py), read again when it
  changes if `--model-config-file-poll-seconds` asks (TF Serving's
  --model_config_file_poll_wait_seconds); a model it stops listing is unloaded.
`declared`: the list is what to serve, so a loaded model it no longer names goes
(a repository's folders are not: one missing may be a sync in progress).
No TensorFlow here."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, VersionPolicy, stamp

log = logging.getLogger("camserve.sources")


@dataclass(frozen=True)
class ModelSource:
    name: str  # the served name, which need not be the folder's
    base_path: Path  # holds VERSION/ folders, and the model's config.json
    policy: VersionPolicy | None = None  # None: config.json's, else the flags'
    labels: dict[str, int] = field(default_factory=dict)  # version label -> version


class RepoSources:
    """Every model folder of a repository, or the names asked for, each pass."""

    declared = False

    def __init__(self, repo: Path, names: list[str] | None = None):
        self.repo, self.names = Path(repo), names

    def current(self) -> dict[str, ModelSource]:
        if not self.repo.is_dir():
            raise FileNotFoundError(f"model repository {self.repo} does not exist")
        names = self.names or [p.name for p in self.repo.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return {name: ModelSource(name, self.repo / name) for name in names}

    def __str__(self):
        return str(self.repo)


class FixedSources:
    """A list given once: one --model-base-path."""

    declared = True

    def __init__(self, sources: list[ModelSource], where: str):
        self.sources = {s.name: s for s in sources}
        self.where = where

    def current(self) -> dict[str, ModelSource]:
        return dict(self.sources)

    def __str__(self):
        return self.where


class ConfigFileSources:
    """A models.config's list, read at start and, every `poll_seconds` (0: never),
    again when the file's size or time changed. A file that no longer reads keeps
    the last good list, said once a change (TF Serving keeps its config too)."""

    declared = True

    def __init__(self, path: Path, load, poll_seconds: float = 0.0):
        """`load(path)`: the file's ModelSources, or ConfigError (tfserving_config.load)."""
        self.path, self.load, self.poll_seconds = Path(path), load, poll_seconds
        self.stamp = stamp(self.path)
        self.sources = {s.name: s for s in load(self.path)}
        self.checked = time.monotonic()

    def current(self) -> dict[str, ModelSource]:
        if self.poll_seconds and time.monotonic() - self.checked >= self.poll_seconds:
            self.checked = time.monotonic()
            now = stamp(self.path)
            if now != self.stamp:
                self.stamp = now
                self._reload()
        return dict(self.sources)

    def _reload(self):
        try:
            sources = {s.name: s for s in self.load(self.path)}
        except ConfigError as err:
            log.error("%s; keeping the models it listed before", err)
            return
        added, removed = sorted(set(sources) - set(self.sources)), sorted(set(self.sources) - set(sources))
        changed = sorted(n for n in set(sources) & set(self.sources) if sources[n] != self.sources[n])
        log.info(
            "%s read again: %s",
            self.path,
            "; ".join(f"{what} {', '.join(names)}" for what, names in (("added", added), ("removed", removed), ("changed", changed)) if names)
            or "no model changed",
        )
        self.sources = sources

    def __str__(self):
        return str(self.path)
