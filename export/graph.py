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

The graph's nodes are walked with nodes.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import keras

from . import heads, nodes, tokens
from .nodes import TargetLayerError


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


class Candidate(NamedTuple):
    path: str  # dotted
    shape: tuple
    main: bool  # on every input-to-output path (_walk)


def candidates(model) -> list[Candidate]:
    """Every non-input layer with a 4-D output."""
    return [
        Candidate(".".join(path), shape, main)
        for path, layer, main in nodes.walk(model)
        if not isinstance(layer, keras.layers.InputLayer)
        and not nodes.is_model(layer)
        and len(shape := nodes.output_shape(layer)) == 4
    ]


def _describe(found) -> str:
    return ", ".join(f"{c.path} {list(c.shape[1:])}" for c in found) or "none"


def _size(c: Candidate) -> str:
    return f"{c.shape[1]}x{c.shape[2]}"


def _default(model) -> tuple[Candidate, str | None]:
    """The last layer on the main path whose output is 4-D and larger than 1x1, and, when
    a larger map comes after it in layer order, a note saying why that one is not used."""
    found = candidates(model)
    larger = [c for c in found if _spatial_ok(c.shape)]
    usable = [c for c in larger if c.main]
    if not usable:
        problem = (
            f"no layer on every input-to-output path of {model.name!r} has a 4-D output larger than 1x1 "
            "(those larger all lie on branches)"
            if larger
            else f"no layer of {model.name!r} has a 4-D output larger than 1x1"
        )
        raise TargetLayerError(f"{problem}; 4-D layers: {_describe(found)}. Choose one with --layer")
    chosen = usable[-1]
    if chosen == larger[-1]:
        return chosen, None
    after = [c for c in found[found.index(chosen) + 1 :] if c.main]  # 1x1, or one would be the default
    why = f"the main path is 1x1 from {after[0].path} on; " if after else ""
    return chosen, (
        f"default target {chosen.path} ({_size(chosen)}): the last layer on every input-to-output path with a map "
        f"larger than 1x1 ({why}later larger maps such as {larger[-1].path} lie on branches)"
    )


def default(model) -> tuple[tuple[str, ...], str | None]:
    """(path, note) of the default target: the last layer on the main path whose output is
    4-D with a spatial size larger than 1x1, or a transformer's token layer (tokens.py); the
    note says why it is not the last larger map in layer order, None when it is."""
    if (token := tokens.default(model)) is not None:
        return token
    chosen, note = _default(model)
    return tuple(chosen.path.split(".")), note


def default_target(model) -> tuple[str, ...]:
    return default(model)[0]


def resolve_target(model, spec: str | None) -> tuple[str, ...]:
    """A layer path from `--layer`: a dotted path, or a name found anywhere in the nesting."""
    if spec is None:
        return default_target(model)
    paths = [path for path, *_ in nodes.walk(model)]
    wanted = tuple(spec.split("."))
    matches = [p for p in paths if p == wanted] or [p for p in paths if len(wanted) == 1 and p[-1] == spec]
    if len(matches) != 1:
        problem = "is ambiguous" if matches else "is not a layer"
        raise TargetLayerError(f"--layer {spec!r} {problem} of {model.name!r}; 4-D layers: {_describe(candidates(model))}")
    layer = nodes.layer_at(model, matches[0])
    if not nodes.is_model(layer) and tokens.is_tokens(tokens.shape_at(model, matches[0])):
        tokens.grid_at(model, matches[0])  # refuses, saying why, tokens without a grid
        return matches[0]
    if nodes.is_model(layer) or not _spatial_ok(nodes.output_shape(layer)):
        raise TargetLayerError(
            f"--layer {spec!r} has output {list(nodes.output_shape(layer))}, not a 4-D feature map larger than 1x1; "
            f"4-D layers: {_describe(candidates(model))}"
        )
    return matches[0]


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
        inputs = nodes.node(model, op).input_tensors
        if nodes.is_model(op):
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
    node = nodes.node(model, layer)
    if len(path) == 1 or not nodes.is_model(layer):
        if len(path) == 2:  # a block the layer calls in turn (tokens.blocks)
            body = tokens.block_body(model, model_in, top.tensor, layer, path[1])
        elif tokens.is_tokens((target := _single(node.output_tensors, f"layer {layer.name!r} output")).shape):
            body = tokens.body(model, model_in, top.tensor, target)  # explained on its patch grid (tokens.py)
        else:
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
