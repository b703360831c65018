"""The models a server holds: each version is a repository entry loaded as a
SavedModel, warmed up at every batch size of its ladder, and fed by its own
batcher; the registry says which version a request runs on."""

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

class ServedModel:
    def __init__(self, path: Path, device: str, options: BatchingOptions, metrics=None):
        self.path = Path(path)
        self.metadata = repository.read_metadata(path)
        # The repository's folders name the model, as in TF Serving: copies and renames just work.
        self.name = self.path.parent.name
        self.version = int(self.path.name)
        self.device = device
        self.height, self.width = self.metadata["input_size"]
        self.num_classes = int(self.metadata["num_classes"])
        self.methods = list(self.metadata["methods"])
        self.classes = self.metadata.get("classes") or []
        self.head = self.metadata.get("head", "softmax")  # exports before heads had softmax only
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

    def close(self):
        self._executor.shutdown(wait=True)


class Registry:
    """Every loaded version of every model; requests get the newest version
    unless they name one. A version enters only once it is warmed up."""

    def __init__(self):
        self.versions: dict[str, dict[int, ServedModel]] = {}
        self.loaded = False  # the first pass over the repository is done
        self.draining = False  # shutting down: not ready, though calls are still answered
        self.refusing = False  # shutting down: new calls get UNAVAILABLE

    @property
    def ready(self) -> bool:
        return self.loaded and not self.draining

    def all(self) -> list[ServedModel]:
        return [m for name in sorted(self.versions) for _, m in sorted(self.versions[name].items())]

    def add(self, model: ServedModel):
        self.versions.setdefault(model.name, {})[model.version] = model

    def remove(self, model: ServedModel):
        self.versions.get(model.name, {}).pop(model.version, None)

    def find(self, name: str, version: int = 0) -> ServedModel | None:
        """The named version, or the newest loaded one; None when there is none."""
        loaded = self.versions.get(name) or {}
        if version:
            return loaded.get(version)
        return loaded[max(loaded)] if loaded else None

    def get(self, name: str, version: int = 0) -> ServedModel:
        """The model a request runs on, or the status that says why there is none."""
        if self.refusing:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry on another replica")
        if not name and len(self.versions) == 1:
            name = next(iter(self.versions))
        if name not in self.versions:
            if not self.loaded:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is still loading its models")
            known = ", ".join(sorted(self.versions)) or "none"
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} is not served here (models: {known})")
        model = self.find(name, version)
        if model is None and version:
            loaded = ", ".join(map(str, sorted(self.versions[name]))) or "none"
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"model {name!r} version {version} is not loaded (loaded: {loaded})")
        if model is None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"model {name!r} has no version loaded yet")
        return model
