"""The camserve.v1 API's messages <-> the pipeline's requests and answers, for
the gRPC service (grpc/native.py) and the upload route's model list."""

from __future__ import annotations

import time

from camserve import overlay
from camserve.v1 import camserve_pb2 as pb

from ..models.registry import AVAILABLE, LOADING, UNAVAILABLE, Registry
from ..pipeline.batcher import PREDICT
from ..pipeline.errors import RequestError, invalid
from ..pipeline.explain import Explained
from ..pipeline.images import Encoded, Raw
from ..pipeline.model import Model
from ..pipeline.targets import FLOAT32, NONE, UINT8, ExplainOptions

HEATMAP_TYPES = {pb.HEATMAP_FLOAT32: FLOAT32, pb.HEATMAP_UINT8: UINT8, pb.HEATMAP_NONE: NONE}


def image(message: pb.Image) -> Encoded | Raw:
    kind = message.WhichOneof("data")
    if kind == "encoded":
        return Encoded(message.encoded)
    if kind == "raw":
        raw = message.raw
        return Raw(raw.pixels, raw.height, raw.width, raw.channels)
    raise invalid("image is empty: set image.encoded or image.raw")


def options(request: pb.ExplainRequest) -> ExplainOptions:
    if request.heatmap_type not in HEATMAP_TYPES:
        raise invalid(f"unknown heatmap type {request.heatmap_type}")
    return ExplainOptions(
        method=request.method,
        class_index=request.class_index if request.HasField("class_index") else None,
        top_k_maps=request.top_k_maps,
        layer=request.layer,
        counterfactual=request.counterfactual,
        resize=request.resize,
        heatmap=HEATMAP_TYPES[request.heatmap_type],
        original_size=request.heatmap_original_size,
        background=request.background if request.HasField("background") else None,
        top_k=request.top_k,
        timeout_ms=request.timeout_ms,
        return_scores=request.return_scores,
    )


def _heatmap(explained: Explained, result) -> pb.Heatmap:
    values, region = explained.heatmap(result)
    uint8 = explained.prepared.options.heatmap == UINT8
    return pb.Heatmap(
        height=values.shape[0],
        width=values.shape[1],
        type=pb.HEATMAP_UINT8 if uint8 else pb.HEATMAP_FLOAT32,
        data=overlay.levels(values).tobytes() if uint8 else values.astype("<f4").tobytes(),
        scale=float(result.outputs["heatmap_scale"]),
        region=pb.Region(x0=region.x0, y0=region.y0, x1=region.x1, y1=region.y1),
    )


def _class(model: Model, outputs: dict, index: int) -> pb.Class:
    return pb.Class(
        index=index,
        label=model.classes[index] if model.classes and index >= 0 else "",
        probability=float(outputs["probabilities"][index]) if index >= 0 else 0.0,
        logit=float(outputs["logits"][index]) if index >= 0 else 0.0,
    )


def response(request_id: str, explained: Explained) -> pb.ExplainResponse:
    prepared, model = explained.prepared, explained.model
    result = explained.results[0]
    outputs = result.outputs
    response = pb.ExplainResponse(
        id=request_id,
        model=model.name,
        version=model.version,
        explained=_class(model, outputs, int(outputs["class_index"])),
        top_k=[_class(model, outputs, int(i)) for i in explained.top_k()],
        method=model.methods[prepared.method] if prepared.method != PREDICT else "",
        image_height=explained.image_size[0],
        image_width=explained.image_size[1],
        timing=pb.Timing(
            queue_ms=result.queue_s * 1e3,
            compute_ms=result.compute_s * 1e3,
            batch_size=result.batch_size,
            total_ms=(time.monotonic() - explained.received) * 1e3,
        ),
    )
    if prepared.method != PREDICT:
        response.heatmap.CopyFrom(_heatmap(explained, result))
    if len(explained.results) > 1:
        for each in explained.results:
            entry = response.maps.add(explained=_class(model, each.outputs, int(each.outputs["class_index"])))
            entry.heatmap.CopyFrom(response.heatmap if each is result else _heatmap(explained, each))
    if prepared.options.return_scores:
        response.logits.extend(outputs["logits"].tolist())
        response.probabilities.extend(outputs["probabilities"].tolist())
    return response


def failed(request: pb.ExplainRequest, failure: RequestError) -> pb.ExplainResponse:
    """One request's failure as its response, in streams and ExplainMany."""
    return pb.ExplainResponse(id=request.id, error=pb.Error(code=failure.code.value[0], message=failure.message))


def model_info(model) -> pb.ModelInfo:
    meta = model.metadata
    return pb.ModelInfo(
        name=model.name,
        version=model.version,
        input_height=model.height,
        input_width=model.width,
        preprocess=meta["preprocess"],
        target_layer=meta["target_layer"],
        feature_height=meta["feature_size"][0],
        feature_width=meta["feature_size"][1],
        methods=model.methods,
        classes=model.classes,
        num_classes=model.num_classes,
        device=model.device,
        batch_sizes=list(model.batcher.ladder),
        state=AVAILABLE,  # only warmed-up versions are in the registry
        tensorflow=meta.get("tensorflow", ""),
        keras=meta.get("keras", ""),
        head=model.head,
        layers=model.layers,
        fusions=model.fusions,
    )


def list_models(registry: Registry) -> pb.ListModelsResponse:
    """The served versions, then those loading or refused."""
    others = [
        pb.ModelInfo(name=name, version=version, state=s.state, state_reason=s.reason)
        for (name, version), s in sorted(registry.states.items())
        if s.state in (LOADING, UNAVAILABLE) and registry.find(name, version) is None
    ]
    return pb.ListModelsResponse(models=[model_info(m) for m in registry.all()] + others)


def get_model(registry: Registry, name: str, version: int) -> pb.ModelInfo:
    """A served version's info, or the state of one that is not served (loading,
    refused, retired)."""
    if version < 0:
        raise invalid(f"version {version} is not a version number")
    model = registry.find(name, version)
    if model is not None:
        return model_info(model)
    known = sorted((v, s) for (n, v), s in registry.states.items() if n == name)
    matches = [(v, s) for v, s in known if v == version] if version else known[-1:]
    if not matches:  # the one NOT_FOUND every API gives, or the model an empty name means on a one-model server
        return model_info(registry.get(name, version, serving=False))
    found, state = matches[0]
    return pb.ModelInfo(name=name, version=found, state=state.state, state_reason=state.reason)
