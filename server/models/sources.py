"""Where the served models come from: each model is a name and a base path, a
folder of VERSION/ folders (TF Serving's base_path), with, from a TF Serving
models.config, its own version policy and version labels. Three ways to say so,
one shape for the lifecycle (lifecycle.py):
- `--repo DIR`: every folder of DIR, or the `--model` names, looked up each pass,
  so a model folder added later is served;
- `--model-base-path DIR --model-name NAME`: one model (TF Serving's one-model start);
- `--model-config-file FILE`: its list (tfserving_config.py), fixed at start.
No TensorFlow here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import VersionPolicy


@dataclass(frozen=True)
class ModelSource:
    name: str  # the served name, which need not be the folder's
    base_path: Path  # holds VERSION/ folders, and the model's config.json
    policy: VersionPolicy | None = None  # None: config.json's, else the flags'
    labels: dict[str, int] = field(default_factory=dict)  # version label -> version


class RepoSources:
    """Every model folder of a repository, or the names asked for, each pass."""

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
    """A list given once: one --model-base-path, or a models.config's models."""

    def __init__(self, sources: list[ModelSource], where: str):
        self.sources = {s.name: s for s in sources}
        self.where = where

    def current(self) -> dict[str, ModelSource]:
        return dict(self.sources)

    def __str__(self):
        return self.where
