"""What one image asks for, as every API asks it (ExplainOptions), checked
against its model before it joins a batch: the (class, method code) pairs that
run, one per map."""

from __future__ import annotations

from dataclasses import dataclass

from camserve import colors, geometry

from .batcher import PREDICT
from .errors import invalid
from .model import Model

DEFAULT_TOP_K = 5
FLOAT32, UINT8, NONE = "float32", "uint8", "none"  # what a map travels as; NONE: predict only
MAP_BYTES = {FLOAT32: 4, UINT8: 1}
RESPONSE_OVERHEAD = 64 * 1024  # everything in a response but the heatmaps and scores, generously


@dataclass(frozen=True)
class ExplainOptions:
    """The native API's fields, by meaning; every API fills them in."""

    method: str = ""  # "": the model's default
    class_index: int | None = None  # None: top-1; -r: the r-th highest class
    top_k_maps: int = 0
    layer: str = ""  # "": the default target layer
    counterfactual: bool = False
    resize: int = geometry.STRETCH
    heatmap: str = FLOAT32
    original_size: bool = False  # the map at the image's size rather than the feature map's
    background: int | None = None  # None: the server's
    top_k: int = 0  # 0: DEFAULT_TOP_K
    timeout_ms: float = 0
    return_scores: bool = False


@dataclass
class Prepared:
    model: Model
    options: ExplainOptions
    targets: list[tuple[int, int]]  # (class_index, method code) per map: one, or top_k_maps
    method: int  # the method's index, or PREDICT
    top_k: int


def check_targets(
    model: Model, class_index: list[int], method: list[int], counterfactual: list[bool] | None = None, layer: list[int] | None = None
) -> list[int]:
    """Per-image class indices (-r: the r-th highest class), method indices,
    counterfactual flags and layer choices (an index into layers + fusions), for
    every API (Python ints: numpy on a few values costs more than the check);
    returns the method codes the export takes (export/explainer.py)."""
    lowest = -model.num_classes if model.class_ranks else -1
    if any(not lowest <= c < model.num_classes for c in class_index):
        if not model.class_ranks and any(c < -1 for c in class_index):
            raise invalid(f"{model.name} version {model.version} was exported before class ranks (class_index < -1, top_k_maps): re-export it")
        ranks = f"-1..-{model.num_classes}: the highest class, the next, ..." if model.class_ranks else "-1: top-1"
        raise invalid(f"class_index out of range for {model.num_classes} classes ({ranks}): {class_index}")
    if any(not 0 <= m < len(model.methods) for m in method):
        raise invalid(f"method codes are 0..{len(model.methods) - 1} ({', '.join(model.methods)}): {method}")
    asked = method  # method indices, before layer codes are added
    if layer and any(layer):
        choices = [*model.layers, *model.fusions]
        if any(not 0 <= each < len(choices) for each in layer):
            raise invalid(f"layer codes are 0..{len(choices) - 1} ({', '.join(choices)}): {layer}")
        if chosen := {model.methods[m] for m, each in zip(asked, layer) if each} & model.attention_methods:
            raise invalid(f"{', '.join(sorted(chosen))} explain the whole model, not a layer: leave the layer out")
        method = [m + model.layer_code * each for m, each in zip(method, layer)]
    if not counterfactual or not any(counterfactual):
        return method
    if model.counterfactual_code is None:
        raise invalid(f"{model.name} version {model.version} was exported before counterfactual maps: re-export it")
    if chosen := {model.methods[m] for m, flag in zip(asked, counterfactual) if flag} & model.class_free_methods:
        raise invalid(f"{', '.join(sorted(chosen))} uses no gradient, so it has no counterfactual map")
    return [m + model.counterfactual_code if flag else m for m, flag in zip(method, counterfactual)]


def method_index(model: Model, name: str) -> int:
    """The index of method `name` ("": the model's default), or why there is none."""
    name = name or model.default_method
    if name not in model.methods:
        why = model.unavailable_methods.get(name)
        because = f"{model.name} does not offer {name!r}: {why}" if why else f"unknown method {name!r}"
        raise invalid(f"{because}; {model.name} offers {', '.join(model.methods)}")
    return model.methods.index(name)


def prepare(model: Model, options: ExplainOptions, max_response_bytes: int) -> Prepared:
    """Every check that needs no pixels."""
    method = method_index(model, options.method)
    maps = options.top_k_maps
    if maps > 1 and options.class_index is not None:
        raise invalid("top_k_maps explains the highest classes: leave class_index unset")
    if maps > model.num_classes:
        raise invalid(f"top_k_maps {maps} is more than the model's {model.num_classes} classes")
    if maps > model.batcher.options.max_enqueued:  # it could never be admitted: retrying would not help
        raise invalid(f"top_k_maps {maps} needs {maps} places in the queue; {model.name} admits {model.batcher.options.max_enqueued} (max_enqueued)")
    if options.heatmap not in (FLOAT32, UINT8, NONE):
        raise invalid(f"unknown heatmap type {options.heatmap}")
    if options.heatmap == NONE and (maps > 1 or options.counterfactual):
        raise invalid("a predict-only request (heatmap type NONE) has no map for top_k_maps or counterfactual")
    classes = [-rank for rank in range(1, maps + 1)] if maps > 1 else [-1 if options.class_index is None else options.class_index]
    choices = [*model.layers, *model.fusions]
    if options.layer and options.layer not in choices:
        raise invalid(f"unknown layer {options.layer!r}; {model.name} offers {', '.join(choices)}")
    layer = choices.index(options.layer) if options.layer else 0
    n = len(classes)
    codes = check_targets(model, classes, [method] * n, [options.counterfactual] * n, [layer] * n)
    if options.resize not in (geometry.STRETCH, geometry.CENTER_CROP, geometry.LETTERBOX):
        raise invalid(f"unknown resize mode {options.resize}")
    if options.heatmap == NONE:
        method, codes = PREDICT, [PREDICT]
    if options.background is not None and not 0 <= options.background <= colors.WHITE:
        raise invalid(f"background {options.background:#x} is not a colour 0xRRGGBB")
    top_k = min(options.top_k or DEFAULT_TOP_K, model.num_classes)
    prepared = Prepared(model, options, list(zip(classes, codes)), method, top_k)
    if method != PREDICT and not options.original_size:
        check_response_size(prepared, model.map_size[0] * model.map_size[1], max_response_bytes)
    return prepared


def check_response_size(prepared: Prepared, map_pixels: int, limit: int):
    """Refuses, before any work, an answer gRPC could not send: every map it carries
    (with top_k_maps, one per class beside the answer's own) and its scores."""
    options = prepared.options
    targets = len(prepared.targets)
    maps = targets + 1 if targets > 1 else 1
    size = maps * map_pixels * MAP_BYTES[options.heatmap] + RESPONSE_OVERHEAD
    if options.return_scores:
        size += 2 * 4 * prepared.model.num_classes
    if size <= limit:
        return
    where = "at the image's original size" if options.original_size else "at feature resolution"
    raise invalid(
        f"{maps} heatmap(s) {where} would make a {size / 2**20:.1f} MB response, over the {limit / 2**20:.1f} MB "
        "message limit: ask for fewer top_k_maps, heatmap_type uint8, a smaller image, or the map at feature "
        "resolution (heatmap_at() resizes it on the client)"
    )
