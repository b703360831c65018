"""A served model: one version of a repository entry loaded as a SavedModel,
warmed up at every batch size of its ladder, and fed by its own batcher. The
only module of the request's way that imports TensorFlow."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

from camserve.export import repository

from ..ops.observer import Observer
from ..pipeline.batcher import IMAGES, MODEL, PREDICT, Batcher
from .config import ModelConfig
from .statistics import ModelStats

log = logging.getLogger("camserve.models")

def ranked_classes(logits: np.ndarray, class_index: np.ndarray) -> np.ndarray:
    """The class each row asks for (c >= 0), or its r-th highest logit (-r), ties in
    index order as the explain signature ranks them (export/explainer.py)."""
    if (class_index >= -1).all():  # the common case: no ranking beyond the top-1
        return np.where(class_index >= 0, class_index, np.argmax(logits, axis=1)).astype(np.int32)
    ranked = np.argsort(-logits, axis=1, kind="stable")
    by_rank = ranked[np.arange(len(logits)), np.clip(-class_index - 1, 0, logits.shape[1] - 1)]
    return np.where(class_index >= 0, class_index, by_rank).astype(np.int32)


class ServedModel:
    def __init__(self, path: Path, device: str, config: ModelConfig, observer: Observer, name: str = ""):
        self.path = Path(path)
        self.config = config
        self.metadata = repository.read_metadata(path)
        # The served name (--model-name, a models.config's name), else the repository's folder, as in
        # TF Serving: copies and renames just work.
        self.name = name or self.path.parent.name
        self.version = int(self.path.name)
        self.device = device
        self.height, self.width = self.metadata["input_size"]
        self.num_classes = int(self.metadata["num_classes"])
        self.methods = list(self.metadata["methods"])
        # Exports before class ranks and counterfactual maps have neither (export/explainer.py).
        self.class_ranks = bool(self.metadata.get("class_ranks"))
        self.counterfactual_code = self.metadata.get("counterfactual_code")
        # Attention methods explain the model, not a layer; a class-free one has no counterfactual.
        self.attention_methods = set(self.metadata.get("attention_methods", []))
        self.class_free_methods = set(self.metadata.get("class_free_methods", []))
        self.unavailable_methods = dict(self.metadata.get("unavailable_methods", {}))  # name -> why
        # Target layers (the default first) and fusions of their maps; one layer before exports had several.
        self.layers = [layer["name"] for layer in self.metadata.get("layers", [])] or [self.metadata["target_layer"]]
        self.fusions = list(self.metadata.get("fusions", []))
        # The largest map an answer can carry: a fusion's comes at the finest layer's size.
        sizes = [layer["feature_size"] for layer in self.metadata.get("layers", [])] or [self.metadata["feature_size"]]
        self.map_size = tuple(max(sizes, key=lambda hw: hw[0] * hw[1]))
        self.layer_code = self.metadata.get("layer_code")
        self.classes = self.metadata.get("classes") or []
        self.head = self.metadata.get("head", "softmax")  # exports before heads had softmax only
        self.default_method = config.default_method or self.methods[0]
        if self.default_method not in self.methods:
            raise ValueError(f"default_method {self.default_method!r} is not one of {', '.join(self.methods)}")
        # A CPU runs one batch at a time; a GPU takes a second one to copy while it computes.
        in_flight = config.batches_in_flight or (2 if "GPU" in device else 1)
        self._executor = ThreadPoolExecutor(in_flight, thread_name_prefix=f"model-{self.name}")
        # The model's own input tensor, beside camserve's uint8 images (export --input-contract model):
        # {"signature", "explain_signature", "input", "dtype", "shape" [H, W, C], "output"}.
        self.input_contract = self.metadata.get("input_contract")
        with tf.device(device):
            signatures = tf.saved_model.load(str(path)).signatures
            # serving_default is `explain` unless the model's own contract took its name; a
            # SavedModel written by hand may lack `predict`: its predict-only requests run explain.
            self._explain, self._predict = signatures.get("explain", signatures["serving_default"]), signatures.get("predict")
            if self.input_contract:
                self._own = {False: signatures[self.input_contract["explain_signature"]], True: signatures[self.input_contract["signature"]]}
        self.stats = ModelStats()
        self.observer = observer.model(self.name, self.stats)
        self.batcher = Batcher(self.run_batch, config.batching, self._executor, self.observer, self.name, in_flight)

    def run_batch(self, images: np.ndarray, class_index: np.ndarray, method: np.ndarray, contract: str = IMAGES) -> dict:
        """One batch of one kind (batcher.py): explain, or for PREDICT rows the predict
        signature, whose explained class is the asked one or the highest logit (the
        top-1 of every head). MODEL rows are the model's own input: its serving_default
        (the original outputs only) for PREDICT, else explain_input."""
        with tf.device(self.device):
            if contract != IMAGES:
                predict = bool(method[0] == PREDICT)
                inputs = {self.input_contract["input"]: tf.constant(images)}
                if not predict:
                    inputs.update(class_index=tf.constant(class_index), method=tf.constant(method))
                return {name: value.numpy() for name, value in self._own[predict](**inputs).items()}
            if method[0] == PREDICT and self._predict is not None:
                outputs = {name: value.numpy() for name, value in self._predict(images=tf.constant(images)).items()}
                outputs["class_index"] = ranked_classes(outputs["logits"], class_index)
                return outputs
            if method[0] == PREDICT:
                method = np.zeros_like(method)  # its maps are computed and not sent
            outputs = self._explain(
                images=tf.constant(images), class_index=tf.constant(class_index), method=tf.constant(method)
            )
        return {name: value.numpy() for name, value in outputs.items()}

    def warm_up(self, say=print):
        """Compiles every batch size of the ladder before the model takes traffic
        (unless its config says warm_up: false)."""
        if not self.config.warm_up:
            say(f"warm-up {self.name} v{self.version}: skipped (config); each batch size compiles on first use")
            return
        for size in self.batcher.ladder:
            started = time.perf_counter()
            images, class_index = np.zeros((size, self.height, self.width, 3), np.uint8), np.full(size, -1, np.int32)
            for kind in (0, PREDICT) if self._predict is not None else (0,):
                self.run_batch(images, class_index, np.full(size, kind, np.int32))
                if self.input_contract:
                    own = np.zeros((size, *self.input_contract["shape"]), self.input_contract["dtype"])
                    self.run_batch(own, class_index, np.full(size, kind, np.int32), MODEL)
            say(f"warm-up {self.name} v{self.version}: batch {size} compiled in {time.perf_counter() - started:.1f}s")

    def close(self):
        self._executor.shutdown(wait=True)
