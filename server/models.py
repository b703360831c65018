"""The models a server holds: each is the newest (or a named) version of a
repository entry, loaded as a SavedModel, warmed up at every batch size of its
ladder, and fed by its own batcher."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf

from camserve.export import repository

from .batcher import Batcher, BatchingOptions
from .errors import RequestError
from .statistics import ModelStats

log = logging.getLogger("camserve.models")

LOADING, AVAILABLE = "LOADING", "AVAILABLE"


class ServedModel:
    def __init__(self, path: Path, device: str, options: BatchingOptions, metrics=None):
        self.path = Path(path)
        self.metadata = repository.read_metadata(path)
        # The repository's folders name the model, as in TF Serving: copies and renames just work.
        self.name = self.path.parent.name
        self.version = int(self.path.name)
        self.device = device
        self.state = LOADING
        self.height, self.width = self.metadata["input_size"]
        self.num_classes = int(self.metadata["num_classes"])
        self.methods = list(self.metadata["methods"])
        self.classes = self.metadata.get("classes") or []
        # One thread runs the model: the device does one batch at a time anyway.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"model-{self.name}")
        with tf.device(device):
            self._explain = tf.saved_model.load(str(path)).signatures["serving_default"]
        self.stats = ModelStats()
        self.batcher = Batcher(self.run_batch, options, self._executor, self.stats, metrics, name=self.name)

    def run_batch(self, images: np.ndarray, class_index: np.ndarray, method: np.ndarray) -> dict:
        with tf.device(self.device):
            outputs = self._explain(
                images=tf.constant(images), class_index=tf.constant(class_index), method=tf.constant(method)
            )
        return {name: value.numpy() for name, value in outputs.items()}

    def warm_up(self, say=print):
        """Compiles every batch size of the ladder before the model takes traffic."""
        for size in self.batcher.ladder:
            started = time.perf_counter()
            self.run_batch(
                np.zeros((size, self.height, self.width, 3), np.uint8),
                np.full(size, -1, np.int32),
                np.zeros(size, np.int32),
            )
            say(f"warm-up {self.name} v{self.version}: batch {size} compiled in {time.perf_counter() - started:.1f}s")
        self.state = AVAILABLE

    def close(self):
        self._executor.shutdown(wait=True)


def discover(repo: Path, names: list[str] | None = None) -> list[Path]:
    """The newest published version folder of each model (or of the named ones)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise FileNotFoundError(f"model repository {repo} does not exist")
    wanted = names or sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = []
    for name in wanted:
        versions = repository.versions(repo, name)
        if not versions:
            raise FileNotFoundError(f"model {name!r} has no published version in {repo}")
        found.append(repository.version_dir(repo, name, versions[-1]))
    return found


class Registry:
    def __init__(self):
        self.models: dict[str, ServedModel] = {}
        self.loaded = False  # every model of the repository is in `models`
        self.draining = False  # shutting down: not ready, though calls are still answered
        self.refusing = False  # shutting down: new calls get UNAVAILABLE

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining

    def add(self, model: ServedModel):
        self.models[model.name] = model

    def get(self, name: str, version: int = 0) -> ServedModel:
        if self.refusing:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica")
        if not name and len(self.models) == 1:
            name = next(iter(self.models))
        model = self.models.get(name)
        if model is None and not self.loaded:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is still loading its models")
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not served here (models: {known})")
        if version and version != model.version:
            raise RequestError(
                grpc.StatusCode.NOT_FOUND, f"model {name!r} version {version} is not loaded (loaded: {model.version})"
            )
        if model.state != AVAILABLE:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {name!r} is still warming up")
        return model
