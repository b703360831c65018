"""The nodes of a Keras functional graph, and the layers inside it: what the target
search (graph.py) and token grids (tokens.py) both walk. Lookups use Keras 3
internals (`_inbound_nodes`, `_nodes`); keras is pinned."""

from __future__ import annotations

import keras
from keras.src.ops.function import make_node_key


class TargetLayerError(ValueError):
    """No usable target layer; the message names the candidates."""


def functional(model):
    """The Functional graph behind a model (a Sequential keeps one privately)."""
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if graph is None or not hasattr(graph, "_nodes"):
        raise TargetLayerError(f"model {model.name!r} has no built graph; call it once or give it an Input")
    return graph


def is_model(layer) -> bool:
    return isinstance(layer, keras.Model)


def node(model, layer):
    """The one node where `layer` is called inside `model`'s graph."""
    graph = functional(model)
    nodes = [node for i, node in enumerate(layer._inbound_nodes) if make_node_key(layer, i) in graph._nodes]
    if len(nodes) != 1:
        raise TargetLayerError(
            f"layer {layer.name!r} is called {len(nodes)} times in {model.name!r}; a shared layer cannot be a split point"
        )
    return nodes[0]


def output_shape(layer):
    try:
        return tuple(layer.output.shape)
    except (AttributeError, ValueError):
        return ()


def producer(graph, tensor):
    """The node of `graph` that computes `tensor`; None when it comes from outside."""
    op, index, _ = tensor._keras_history
    return op._inbound_nodes[index] if op is not None and make_node_key(op, index) in graph._nodes else None


def main_layers(model) -> set:
    """The layers called on every path from `model`'s inputs to its outputs (the outputs'
    dominators). A map at a layer beside another path (an Inception branch, the convs a
    residual connection skips) sees only part of what reaches the output."""
    try:
        graph = functional(model)
    except TargetLayerError:
        return set()  # a subclassed model: what happens inside is unknown
    outputs = [node for node in (producer(graph, t) for t in graph.outputs) if node is not None]

    def parents(node):
        return [p for p in (producer(graph, t) for t in node.input_tensors) if p is not None]

    # Post-order from the outputs: a topological order of the nodes they depend on.
    order, position, stack = [], {}, [(node, False) for node in outputs]
    while stack:
        node, done = stack.pop()
        if node in position:
            continue
        if done:
            position[node] = len(order)
            order.append(node)
        else:
            stack.append((node, True))
            stack.extend((p, False) for p in parents(node) if p not in position)
    # Every path runs forward in that order, so a node is on all of them exactly when no
    # edge jumps over it. A virtual source (-1) feeds the inputs (nodes reading nothing, or
    # a tensor from outside the graph); a virtual sink (len(order)) reads the outputs.
    reach = [-1] * len(order)  # reach[a]: the furthest position an edge from position a goes to
    furthest = -1
    for b, node in enumerate(order):
        ps = parents(node)
        if not ps or len(ps) < len(node.input_tensors):
            furthest = b
        for p in ps:
            reach[position[p]] = max(reach[position[p]], b)
    for node in outputs:
        reach[position[node]] = len(order)
    main = set()
    for b, node in enumerate(order):
        if furthest <= b:
            main.add(node.operation)
        furthest = max(furthest, reach[b])
    return main


def walk(model, prefix=(), main=True):
    """(path, layer, on the main path) for every layer, depth first, in graph order, nested
    models included; a layer is on the main path when it is on every input-to-output path
    of its model and its model is too."""
    on_path = main_layers(model) if main else set()
    for layer in model.layers:
        path = prefix + (layer.name,)
        yield path, layer, layer in on_path
        if is_model(layer):
            yield from walk(layer, path, layer in on_path)
        for block in blocks(layer):  # called in turn by the layer: each on its path
            yield path + (block.name,), block, layer in on_path


def layer_at(model, path):
    for name in path:
        model = model.get_layer(name) if is_model(model) else next(b for b in blocks(model) if b.name == name)
    return model


def blocks(layer) -> list:
    """The blocks `layer` calls in turn when it holds them in a list rather than a graph
    (keras-hub's ViTEncoder and DeiTEncoder: `encoder_layers`; DINOV2Encoder: `layers`);
    [] for any other layer."""
    if is_model(layer):
        return []
    for attribute in ("encoder_layers", "layers"):
        held = getattr(layer, attribute, None)
        if isinstance(held, (list, tuple)) and held and all(isinstance(b, keras.layers.Layer) for b in held):
            return list(held)
    return []
