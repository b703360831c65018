"""TensorFlow Serving's APIs <-> the pipeline, for gRPC (grpc/tfserving.py:
PredictionService, ModelService) and REST (http/tfserving.py: TF Serving's and
KServe V1's routes) alike. Tensors arrive and leave as numpy arrays, so that
TensorFlow's own protobufs stay gRPC's; the answers that are not tensors (model
status, metadata) are built here as the protobuf JSON that REST sends as it is
and gRPC parses into its message.

A model's signatures, as TF Serving would list them for its SavedModel:
- `explain` (camserve's: `images` UINT8 [N,H,W,3] or `image_bytes` encoded
  images, optional per-image `class_index`, `method`, `counterfactual`,
  `layer`; outputs logits, probabilities, class_index, heatmap,
  heatmap_scale) and `predict` (the same inputs; no map);
- `serving_default`: `explain`, or for a model exported with its own input
  contract (export --input-contract model), the model's input tensor under
  its own alias, answering the original model's output under its own alias;
  heatmap, heatmap_scale, class_index, logits and probabilities are extra
  outputs, sent when output_filter asks for them (or on KServe V1's
  `:explain`). Class and method are optional inputs, as on KServe.
A request that asks for no map runs the model's predict signature, at the cost
of a plain prediction.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np

from ..models.registry import AVAILABLE, END, LOADING, UNAVAILABLE, Registry
from ..pipeline.batcher import IMAGES, MODEL, PREDICT
from ..pipeline.deadlines import deadline
from ..pipeline.errors import RequestError, invalid
from ..pipeline.explain import Pipeline
from ..pipeline.inputs import INPUTS, image_batch, model_input_batch
from ..pipeline.model import Model

DEFAULT = "serving_default"
STRING = "string"  # a TensorSpec dtype beside numpy's names: DT_STRING
DT = {
    "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "float16": "DT_HALF", "int8": "DT_INT8", "int16": "DT_INT16",
    "int32": "DT_INT32", "int64": "DT_INT64", "uint8": "DT_UINT8", "uint16": "DT_UINT16", "bool": "DT_BOOL", STRING: "DT_STRING",
}
PREDICT_METHOD = "tensorflow/serving/predict"
# TF Serving's ModelVersionStatus states for the registry's; a refused version has ended with its error.
STATES = {LOADING: "LOADING", AVAILABLE: "AVAILABLE", UNAVAILABLE: "END", END: "END"}
MAPS = ("heatmap", "heatmap_scale")


@dataclass(frozen=True)
class Spec:
    """TF Serving's model_spec: no version and no label: the newest."""

    name: str
    version: int = 0
    label: str = ""
    signature: str = ""  # "": serving_default


@dataclass(frozen=True)
class TensorSpec:
    dtype: str  # a numpy dtype's name, or STRING
    shape: tuple[int, ...]  # -1: any size (the batch)


@dataclass(frozen=True)
class Signature:
    contract: str  # IMAGES or MODEL (pipeline/batcher.py)
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    answers: tuple[str, ...]  # the outputs sent when output_filter names none
    plain: frozenset[str]  # the outputs a plain prediction gives


def _signatures(model: Model) -> dict[str, Signature]:
    h, w = model.map_size
    c = model.num_classes
    per_image = {name: TensorSpec("int32", (-1,)) for name in INPUTS[2:]}
    images = {"images": TensorSpec("uint8", (-1, model.height, model.width, 3)), "image_bytes": TensorSpec(STRING, (-1,))}
    scores = {"logits": TensorSpec("float32", (-1, c)), "probabilities": TensorSpec("float32", (-1, c)), "class_index": TensorSpec("int32", (-1,))}
    maps = {"heatmap": TensorSpec("float32", (-1, h, w)), "heatmap_scale": TensorSpec("float32", (-1,))}
    explain = Signature(IMAGES, {**images, **per_image}, {**scores, **maps}, (*scores, *maps), frozenset(scores))
    table = {"explain": explain, "predict": Signature(IMAGES, images, scores, tuple(scores), frozenset(scores)), DEFAULT: explain}
    contract = model.input_contract
    if contract:
        own = {contract["input"]: TensorSpec(contract["dtype"], (-1, *contract["shape"]))}
        output = contract["output"]
        width = 1 if model.head == "binary" else c  # a binary head's model outputs its positive class
        outputs = {output: TensorSpec("float32", (-1, width)), **scores, **maps}
        table[DEFAULT] = Signature(MODEL, {**own, **per_image}, outputs, (output,), frozenset({output}))
    return table


class TFServing:
    """The APIs' answers; failures raise RequestError with TF Serving's status."""

    def __init__(self, registry: Registry, pipeline: Pipeline):
        self.registry = registry
        self.pipeline = pipeline
        self._signatures: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def model(self, spec: Spec, serving: bool = True) -> Model:
        return self.registry.get(spec.name, spec.version, serving, label=spec.label)

    def _table(self, model: Model) -> dict[str, Signature]:
        table = self._signatures.get(model)
        if table is None:
            table = self._signatures[model] = _signatures(model)
        return table

    def signature(self, model: Model, name: str) -> tuple[str, Signature]:
        table = self._table(model)
        name = name or DEFAULT
        if name not in table:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found. Signatures are {", ".join(sorted(table))}')
        return name, table[name]

    # -- ModelService.GetModelStatus, GET /v1/models/NAME ------------------------
    def status(self, spec: Spec) -> dict:
        """GetModelStatusResponse as protobuf JSON: every version known of the model
        (loading, serving, refused or retired), newest first, or the one asked. A
        label is not looked at, as in TF Serving (get_model_status_impl.cc)."""
        version = spec.version
        states = {v: s for (n, v), s in self.registry.states.items() if n == spec.name and (not version or v == version)}
        if not states:
            what = f"version {version} of model {spec.name}" if version else f"any versions of model {spec.name}"
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Could not find {what}")
        return {
            "model_version_status": [
                {
                    "version": str(v),
                    "state": STATES[s.state],
                    "status": {"error_code": "UNKNOWN" if s.state == UNAVAILABLE else "OK", "error_message": s.reason},
                }
                for v, s in sorted(states.items(), reverse=True)
            ]
        }

    # -- PredictionService.GetModelMetadata, GET .../metadata ---------------------
    def metadata(self, spec: Spec) -> tuple[Model, dict]:
        """(the model, its SignatureDefMap as protobuf JSON)."""
        model = self.model(spec, serving=False)
        table = self._table(model)

        def info(prefix: str, alias: str, tensor: TensorSpec) -> dict:
            dims = [{"size": str(d), "name": ""} for d in tensor.shape]
            return {"dtype": DT[tensor.dtype], "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": f"{prefix}_{alias}:0"}

        definitions = {
            name: {
                "inputs": {alias: info(name, alias, t) for alias, t in sig.inputs.items()},
                "outputs": {alias: info("StatefulPartitionedCall", alias, t) for alias, t in sig.outputs.items()},
                "method_name": PREDICT_METHOD,
            }
            for name, sig in table.items()
        }
        return model, {"signature_def": definitions}

    # -- PredictionService.Predict, POST ...:predict / :explain -------------------
    async def predict(
        self, spec: Spec, read: Callable[[Signature], dict], output_filter: list[str], context, api: str,
        explain: bool = False, heavy: bool = False,
    ) -> tuple[Model, str, dict[str, np.ndarray]]:
        """(the model, the signature's name, the outputs asked {alias: [N, ...]}).
        read(signature) -> the request's tensors {alias: ndarray, or a list of bytes
        for DT_STRING}, run on the decode pool when `heavy`. `explain`: every output
        of the signature (KServe V1's :explain)."""
        received = time.monotonic()
        pipeline = self.pipeline
        with pipeline.calls.accounted(api, context) as call:
            call.model = model = self.model(spec)
            name, signature = self.signature(model, spec.signature)
            wanted = _wanted(signature, output_filter, explain)
            tensors = await pipeline.on_pool(functools.partial(read, signature)) if heavy else read(signature)
            unknown = sorted(set(tensors) - set(signature.inputs))
            if unknown:
                raise invalid(f"input tensor alias not found in signature: {unknown[0]}. Inputs expected to be in the set {{{','.join(signature.inputs)}}}.")
            if signature.contract == MODEL:
                images, class_index, method = model_input_batch(model, tensors, next(iter(signature.inputs)))
            else:
                images, class_index, method = image_batch(model, tensors, pipeline.limits)
            if set(wanted) <= signature.plain:
                method = [PREDICT] * len(images)
            until = deadline(context, received, 0, pipeline.limits.default_timeout_s)
            outputs, call.queue_s = await pipeline.run_images(model, images, class_index, method, until, signature.contract)
            return model, name, {alias: outputs[alias] for alias in wanted}


def _wanted(signature: Signature, output_filter: list[str], explain: bool) -> tuple[str, ...]:
    if explain:
        return tuple(signature.outputs)
    if not output_filter:
        return signature.answers
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid(f"output tensor alias not found in signature: {alias} Outputs expected to be in the set {{{','.join(signature.outputs)}}}.")
    if len(set(output_filter)) < len(output_filter):
        raise invalid(f"duplicate output tensor alias: {next(a for a in output_filter if output_filter.count(a) > 1)}")
    return tuple(output_filter)
