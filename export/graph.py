"""Graph surgery on a Keras model: find the Grad-CAM target layer and build a
forward function that returns (logits, activations) in one pass.

A target inside a nested model (a backbone used as a layer, a Sequential head)
cannot be reached by a sub-model of the outer graph (Keras calls it
disconnected), so the graph is split there instead: pre = the outer graph up to
the nested model, the nested model is split recursively, post = the outer graph
after it. A trailing softmax (Dense activation, Softmax or Activation layer, also
inside a nested head) is skipped by reading the tensor before it, so gradients
and logits come from pre-softmax scores without mutating the user's model.

Node lookups use Keras 3 internals (`_inbound_nodes`, `_nodes`); keras is pinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
from keras.src.ops.function import make_node_key


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


def _is_softmax(activation) -> bool:
    return getattr(activation, "__name__", None) == "softmax"


@dataclass
class _Head:
    """How the logits of a graph are read: a tensor of the graph and what to apply after it."""

    tensor: object
    apply: Callable


def _identity(x):
    return x


def _logits_head(model) -> _Head:
    """Where `model`'s pre-softmax scores are: its output, or the input of a trailing softmax."""
    out = _single(model.outputs, f"model {model.name!r} output")
    last = out._keras_history.operation
    node = _node(model, last)
    last_in = _single(node.input_tensors, f"layer {last.name!r} input")
    if isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and _is_softmax(last.activation)
    ):
        return _Head(last_in, _identity)
    if isinstance(last, keras.layers.Dense) and _is_softmax(last.activation):
        return _Head(last_in, lambda h: _dense_linear(last, h))
    if _is_model(last):
        inner = split(last, (), strip_softmax=True)
        return _Head(last_in, lambda h: inner(h)[0])
    return _Head(out, _identity)


def _dense_linear(dense, h):
    """The Dense layer's affine part, i.e. its output before the softmax."""
    z = keras.ops.matmul(h, keras.ops.cast(dense.kernel, h.dtype))
    return z + keras.ops.cast(dense.bias, h.dtype) if dense.use_bias else z


def _submodel(inputs, outputs):
    """inputs -> outputs inside an existing graph; the identity when they coincide."""
    if len(outputs) == 1 and outputs[0] is inputs:
        return lambda x, training=False: x
    return keras.Model(inputs, outputs if len(outputs) > 1 else outputs[0])


Forward = Callable[..., tuple]


def split(model, path: tuple[str, ...], strip_softmax: bool) -> Forward:
    """forward(x) -> (y, activations): y is the model's output, or its logits when
    strip_softmax; activations is the target layer's output (None when path is empty).
    Everything runs in inference mode in one pass, so the activations are an
    intermediate tensor that gradients of y can be taken against."""
    model_in = _single(model.inputs, f"model {model.name!r} input")
    head = _logits_head(model) if strip_softmax else _Head(_single(model.outputs, "output"), _identity)
    if not path:
        body = _submodel(model_in, [head.tensor])
        return lambda x: (head.apply(body(x, training=False)), None)

    layer = model.get_layer(path[0])
    node = _node(model, layer)
    if len(path) == 1:
        target = _single(node.output_tensors, f"layer {layer.name!r} output")
        body = keras.Model(model_in, [head.tensor, target])

        def forward(x):
            y, activations = body(x, training=False)
            return head.apply(y), activations

        return forward

    # The target sits inside a nested model: split the outer graph around it.
    layer_in = _single(node.input_tensors, f"layer {layer.name!r} input")
    layer_out = _single(node.output_tensors, f"layer {layer.name!r} output")
    pre = _submodel(model_in, [layer_in])
    last = _single(model.outputs, "output")._keras_history.operation
    if layer is last and strip_softmax:
        inner = split(layer, path[1:], strip_softmax=True)
        return lambda x: inner(pre(x, training=False))

    inner = split(layer, path[1:], strip_softmax=False)
    try:
        post = _submodel(layer_out, [head.tensor])
    except ValueError as err:
        raise TargetLayerError(
            f"cannot split {model.name!r} at nested model {layer.name!r}: the rest of the graph also reads "
            f"tensors from before it ({err}); choose a target with --layer outside {layer.name!r}"
        ) from err

    def forward(x):
        y, activations = inner(pre(x, training=False))
        return head.apply(post(y, training=False)), activations

    return forward
