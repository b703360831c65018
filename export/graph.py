"""Graph surgery on a Keras model: find the Grad-CAM target layer and build a
forward function that returns (logits, activations) in one pass.

A target inside a nested model (a backbone used as a layer, a Sequential head)
cannot be reached by a sub-model of the outer graph (Keras calls it
disconnected), so the graph is split there instead: pre = the outer graph up to
the nested model, the nested model is split recursively, post = the outer graph
after it. A trailing softmax or sigmoid (however it is written, see heads.py;
also inside a nested head model) is skipped by reading the tensor before it, so
gradients and logits come from the scores before it; a layer's own activation
is left out only for the duration of the call that computes those scores.

Node lookups use Keras 3 internals (`_inbound_nodes`, `_nodes`); keras is pinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
from keras.src.ops.function import make_node_key

from . import heads


class TargetLayerError(ValueError):
    """No usable target layer; the message names the candidates."""


def _graph(model):
    """The Functional graph behind a model (a Sequential keeps one privately)."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "_nodes"):
        raise TargetLayerError(f"model {model.name!r} has no built graph; call it once or give it an Input")
    return graph


def _is_model(layer) -> bool:
    return isinstance(layer, keras.Model)


def _node(model, layer):
    """The one node where `layer` is called inside `model`'s graph."""
    graph = _graph(model)
    nodes = [node for i, node in enumerate(layer._inbound_nodes) if make_node_key(layer, i) in graph._nodes]
    if len(nodes) != 1:
        raise TargetLayerError(
            f"layer {layer.name!r} is called {len(nodes)} times in {model.name!r}; a shared layer cannot be a split point"
        )
    return nodes[0]


def _single(tensors, what):
    tensors = list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]
    if len(tensors) != 1:
        raise TargetLayerError(f"{what} has {len(tensors)} tensors; camserve explains single-input, single-output models")
    return tensors[0]


def _spatial_ok(shape) -> bool:
    """4-D with a spatial size larger than 1x1 (unknown sizes count: the input size is open)."""
    if len(shape) != 4:
        return False
    h, w = shape[1], shape[2]
    return h is None or w is None or h * w > 1


def _output_shape(layer):
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return ()


def _walk(model, prefix=()):
    """(path, layer) for every layer, depth first, in graph order, nested models included."""
    for layer in model.layers:
        path = prefix + (layer.name,)
        yield path, layer
        if _is_model(layer):
            yield from _walk(layer, path)


def candidates(model) -> list[tuple[str, tuple]]:
    """Every non-input layer with a 4-D output, as (dotted path, output shape)."""
    return [
        (".".join(path), shape)
        for path, layer in _walk(model)
        if not isinstance(layer, keras.layers.InputLayer)
        and not _is_model(layer)
        and len(shape := _output_shape(layer)) == 4
    ]


def _describe(found) -> str:
    return ", ".join(f"{path} {list(shape[1:])}" for path, shape in found) or "none"


def default_target(model) -> tuple[str, ...]:
    """The last layer whose output is 4-D with a spatial size larger than 1x1."""
    found = candidates(model)
    usable = [path for path, shape in found if _spatial_ok(shape)]
    if not usable:
        raise TargetLayerError(
            f"no layer of {model.name!r} has a 4-D output larger than 1x1; 4-D layers: {_describe(found)}. "
            "Choose one with --layer"
        )
    return tuple(usable[-1].split("."))


def resolve_target(model, spec: str | None) -> tuple[str, ...]:
    """A layer path from `--layer`: a dotted path, or a name found anywhere in the nesting."""
    if spec is None:
        return default_target(model)
    paths = [path for path, _ in _walk(model)]
    wanted = tuple(spec.split("."))
    matches = [p for p in paths if p == wanted] or [p for p in paths if len(wanted) == 1 and p[-1] == spec]
    if len(matches) != 1:
        problem = "is ambiguous" if matches else "is not a layer"
        raise TargetLayerError(f"--layer {spec!r} {problem} of {model.name!r}; 4-D layers: {_describe(candidates(model))}")
    layer = _layer_at(model, matches[0])
    if _is_model(layer) or not _spatial_ok(_output_shape(layer)):
        raise TargetLayerError(
            f"--layer {spec!r} has output {list(_output_shape(layer))}, not a 4-D feature map larger than 1x1; "
            f"4-D layers: {_describe(candidates(model))}"
        )
    return matches[0]


def _layer_at(model, path):
    for name in path:
        model = model.get_layer(name)
    return model


@dataclass
class Head:
    """Where a graph's logits are read, and what its last op means (heads.py):
    the head's scores are apply(value of `tensor`)."""

    kind: str
    tensor: object
    apply: Callable
    stripped: bool  # the last op was left out to reach the scores before it
    where: str  # the last op, as a dotted path
    forced: bool = False  # the kind came from --head


def _identity(x):
    return x


def _without_activation(layer):
    """The layer's output before its activation, computed with its own weights."""

    def pre_activation(h):
        activation = layer.activation
        layer.activation = keras.activations.linear
        try:
            return layer(h)
        finally:
            layer.activation = activation

    return pre_activation


def head(model, override: str | None = None) -> Head:
    """The head of `model`: its last op, looked through trailing identities
    (a float32 cast for mixed precision) and into a nested head model."""
    out = _single(model.outputs, f"model {model.name!r} output")
    if len(out.shape) != 2:
        raise heads.HeadError(
            f"model {model.name!r} outputs {list(out.shape)}; camserve explains classifiers whose output is [N, classes]"
        )
    width, tensor = int(out.shape[-1]), out
    while True:
        op = tensor._keras_history.operation
        if isinstance(op, keras.layers.InputLayer):
            kind, _ = heads.decide(heads.OTHER, override, width, op.name)
            return Head(kind, out, _identity, False, op.name, bool(override))
        inputs = _node(model, op).input_tensors
        if _is_model(op):
            inner = head(op, override)
            body = _submodel(_single(op.inputs, f"model {op.name!r} input"), [inner.tensor])
            return Head(
                inner.kind,
                _single(inputs, f"layer {op.name!r} input"),
                lambda h: inner.apply(body(h, training=False)),
                inner.stripped,
                f"{op.name}.{inner.where}",
                inner.forced,
            )
        # A layer with an activation (Dense, Conv) is stripped of it; any other op is the activation.
        whole = isinstance(op, keras.layers.Activation) or not callable(getattr(op, "activation", None))
        if len(inputs) != 1:
            found = heads.OTHER
        else:
            activation, scores = (op, inputs[0]) if whole else (op.activation, tensor)
            found = heads.probe(activation, tuple(scores.shape[1:]), scores.dtype)
        if whole and found == heads.IDENTITY:
            tensor = inputs[0]
            continue
        kind, strip = heads.decide(found, override, width, op.name)
        if not strip:
            return Head(kind, out, _identity, False, op.name, bool(override))
        return Head(kind, inputs[0], _identity if whole else _without_activation(op), True, op.name, bool(override))


def _submodel(inputs, outputs):
    """inputs -> outputs inside an existing graph; the identity when they coincide."""
    if len(outputs) == 1 and outputs[0] is inputs:
        return lambda x, training=False: x
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0])


Forward = Callable[..., tuple]


def split(model, path: tuple[str, ...], top: Head | None) -> Forward:
    """forward(x) -> (y, activations): y is the model's output, or the scores of its
    head `top` (before a softmax or sigmoid; see head()); activations is the target
    layer's output (None when path is empty). Everything runs in inference mode in
    one pass, so the activations are an intermediate tensor that gradients of y can
    be taken against."""
    model_in = _single(model.inputs, f"model {model.name!r} input")
    out = _single(model.outputs, "output")
    to_scores = top is not None
    top = top or Head("linear", out, _identity, False, out.name)
    if not path:
        body = _submodel(model_in, [top.tensor])
        return lambda x: (top.apply(body(x, training=False)), None)

    layer = model.get_layer(path[0])
    node = _node(model, layer)
    if len(path) == 1:
        target = _single(node.output_tensors, f"layer {layer.name!r} output")
        body = keras.Model(model_in, [top.tensor, target])

        def forward(x):
            y, activations = body(x, training=False)
            return top.apply(y), activations

        return forward

    # The target sits inside a nested model: split the outer graph around it.
    layer_in = _single(node.input_tensors, f"layer {layer.name!r} input")
    layer_out = _single(node.output_tensors, f"layer {layer.name!r} output")
    pre = _submodel(model_in, [layer_in])
    if layer is out._keras_history.operation and to_scores:
        inner = split(layer, path[1:], head(layer, top.kind if top.forced else None))
        return lambda x: inner(pre(x, training=False))

    inner = split(layer, path[1:], None)
    try:
        post = _submodel(layer_out, [top.tensor])
    except ValueError as err:
        raise TargetLayerError(
            f"cannot split {model.name!r} at nested model {layer.name!r}: the rest of the graph also reads "
            f"tensors from before it ({err}); choose a target with --layer outside {layer.name!r}"
        ) from err

    def forward(x):
        y, activations = inner(pre(x, training=False))
        return top.apply(post(y, training=False)), activations

    return forward
