"""What the request path reads of a served model (models/served.py implements
it), so that the pipeline needs neither the models layer nor TensorFlow."""

from __future__ import annotations

from typing import Protocol

from .batcher import Batcher


class Model(Protocol):
    name: str
    version: int
    height: int
    width: int
    num_classes: int
    head: str  # softmax, sigmoid, binary or linear (export/heads.py)
    classes: list[str]
    methods: list[str]
    default_method: str
    unavailable_methods: dict[str, str]
    attention_methods: set[str]
    class_free_methods: set[str]
    class_ranks: bool
    counterfactual_code: int | None
    layers: list[str]
    fusions: list[str]
    layer_code: int | None
    map_size: tuple[int, int]
    batcher: Batcher
    observer: object  # ops/observer.py's ModelObserver
    input_contract: dict | None  # the model's own input tensor, when exported with it (models/served.py)


class Models(Protocol):
    def get(self, name: str, version: int = 0, serving: bool = True) -> Model: ...
