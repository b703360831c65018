"""Token sequences as feature maps, for vision transformers.

A layer whose output is [N, T, D] is a feature map once its leading non-patch
tokens (class, distillation, register tokens) are dropped and the rest reshaped
to the patch grid [N, gh, gw, D], row by row as a Conv2D patch embedding's
output is flattened; every CAM method then works on the grid unchanged.

The grid is read from the model, never guessed from T: it is the spatial size
of the 4-D map the tokens were made from (the patch embedding's output, which
Keras sized from the input size and the Conv2D's kernel and strides), found by
walking the graph back from the target to the nearest 4-D tensors; the prefix
count is T - gh * gw. Tokens with no such map, or with fewer tokens than grid
cells, are refused.

The default target of a transformer classifier (its main path ends in tokens)
depends on how the head pools them. A head that reads only prefix tokens (a
class token) has exactly zero gradient at the patch tokens of the final token
output, since a per-token LayerNorm and the slice never mix tokens; the
patch tokens reach the class token only through the last block's attention, so
the default is that block's input (the input of its first LayerNormalization,
on the residual path). A head that pools every token (the mean) is explained at
the final token output. Which one a head does is measured, not read from how it
is written: one probe of the gradient at the final token output.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from . import graph


class TokenGrid(NamedTuple):
    prefix: int  # leading non-patch tokens
    grid: tuple[int, int]  # (gh, gw)
    source: str  # the layer whose 4-D output the tokens were made from

    def to_map(self, tokens):
        """[N, T, D] -> [N, gh, gw, D]."""
        return tf.reshape(tokens[:, self.prefix :], [-1, *self.grid, tokens.shape[-1]])

    def to_tokens(self, prefix_of, patch_map):
        """The inverse: the prefix tokens of `prefix_of`, then the map's cells row by row."""
        return tf.concat([prefix_of[:, : self.prefix], tf.reshape(patch_map, [-1, self.grid[0] * self.grid[1], patch_map.shape[-1]])], axis=1)

    def __str__(self) -> str:
        return f"{self.prefix} prefix + {self.grid[0]} x {self.grid[1]} patch grid of {self.source}"


def is_tokens(shape) -> bool:
    return len(shape) == 3


def grid(model, tensor) -> TokenGrid:
    """The patch grid of `tensor`, a token sequence [N, T, D] inside `model`'s graph;
    raises TargetLayerError saying why when the model does not give it."""
    name = tensor._keras_history.operation.name
    tokens = tensor.shape[1]
    if tokens is None:
        raise graph.TargetLayerError(f"layer {name!r} has an open token count {list(tensor.shape)}: give --input-size HxW")
    maps = _source_maps(graph._graph(model), tensor)
    sizes = {tuple(t.shape[1:3]) for t in maps}
    if len(sizes) != 1 or None in next(iter(sizes)):
        found = ", ".join(f"{t._keras_history.operation.name} {list(t.shape[1:])}" for t in maps) or "none"
        raise graph.TargetLayerError(
            f"cannot tell the patch grid of layer {name!r} ({tokens} tokens): its tokens must come from one 4-D "
            f"patch map of static size (a Conv2D patch embedding), found {found}"
        )
    (gh, gw), source = next(iter(sizes)), maps[0]._keras_history.operation
    if isinstance(source, keras.layers.InputLayer) or tokens < gh * gw:
        raise graph.TargetLayerError(
            f"layer {name!r} has {tokens} tokens, made from {source.name!r} {list(maps[0].shape[1:])}, which is not "
            "their patch grid (tokens made from the image by a custom layer have no grid camserve can read)"
        )
    return TokenGrid(tokens - gh * gw, (int(gh), int(gw)), source.name)


def _source_maps(g, tensor) -> list:
    """The nearest 4-D tensors `tensor` is computed from, inside graph `g`."""
    found, seen, stack = [], set(), [tensor]
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if len(t.shape) == 4:
            found.append(t)
        elif (node := graph._producer(g, t)) is not None:
            stack.extend(node.input_tensors)
    return found


def body(model, model_in, scores, target):
    """x -> (scores, the target's patch map) with the map upstream of the scores, so that
    gradients can be taken against it: the model runs up to the target, the tokens are
    reshaped to the grid and back, and the rest of the model runs from them (given the
    input too, which paths around the target, such as a residual, still read)."""
    at = grid(model, target)
    before = keras.Model(model_in, target)
    after = keras.Model([model_in, target], scores)

    def forward(x, training=False):
        tokens = before(x, training=training)
        patch_map = at.to_map(tokens)
        return after([x, at.to_tokens(tokens, patch_map)], training=training), patch_map

    return forward


class TokenLayer(NamedTuple):
    path: str  # dotted
    tokens: int
    channels: int
    grid: TokenGrid
    main: bool  # on every input-to-output path (graph._walk)


def candidates(model) -> list[TokenLayer]:
    """Every layer with a token output whose patch grid the model gives, nested models included."""
    found = []
    for path, layer, main in graph._walk(model):
        shape = graph._output_shape(layer)
        if graph._is_model(layer) or not is_tokens(shape):
            continue
        try:
            at = grid(graph._layer_at(model, path[:-1]), layer.output)
            found.append(TokenLayer(".".join(path), shape[1], shape[2], at, main))
        except (graph.TargetLayerError, ValueError):
            continue  # no grid: not a map camserve can explain
    return found


def default(model) -> tuple[tuple[str, ...], str] | None:
    """(path, note) of a transformer classifier's default target (module docstring);
    None when the model's main path does not end in a token sequence."""
    main = graph._main_layers(model)
    # The last map or token sequence on the main path, in graph order: tokens make a transformer.
    mapped = [
        layer for layer in model.layers
        if layer in main and not isinstance(layer, keras.layers.InputLayer) and len(graph._output_shape(layer)) in (3, 4)
    ]
    if not mapped or not is_tokens(graph._output_shape(mapped[-1])):
        return None
    final = mapped[-1]
    tokens = grid(model, final.output)
    if not _reads_only_prefix(model, final.output, tokens.prefix):
        return (final.name,), (
            f"default target {final.name} ({tokens}): the head pools the patch tokens of the final token output"
        )
    block_in = _last_block_input(model)
    if block_in is None:
        raise graph.TargetLayerError(
            f"the head of {model.name!r} reads only the prefix tokens of {final.name!r}, whose patch tokens therefore "
            "get zero gradient, and camserve cannot find the last transformer block's input (a layer feeding the "
            "last MultiHeadAttention): choose a token layer before the last block's attention with --layer"
        )
    return (block_in.name,), (
        f"default target {block_in.name} ({grid(model, block_in.output)}), the last transformer block's input: "
        f"the head reads only the class token, so the patch tokens of {final.name} get zero gradient"
    )


def _reads_only_prefix(model, tokens, prefix: int) -> bool:
    """Whether the model's output has exactly zero gradient at every patch token of `tokens`
    for a random image and random class weights (softmax rows sum to 1, so not all ones)."""
    probe = keras.Model(model.inputs, [tokens, model.outputs[0]])
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 1, (1, *model.inputs[0].shape[1:])), model.inputs[0].dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        values, out = probe(x, training=False)
        score = tf.reduce_sum(out * tf.constant(rng.uniform(0.5, 1.5, out.shape), out.dtype))
    return not np.any(tape.gradient(score, values).numpy()[:, prefix:])


def _last_block_input(model):
    """The layer whose output is the last MultiHeadAttention's block input: the input of the
    LayerNormalization before it (pre-norm), else its query; None when no layer computes it."""
    g = graph._graph(model)
    attention = [layer for layer in model.layers if isinstance(layer, keras.layers.MultiHeadAttention)]
    if not attention:
        return None
    query = graph._node(model, attention[-1]).input_tensors[0]
    norm = graph._producer(g, query)
    if norm is not None and isinstance(norm.operation, keras.layers.LayerNormalization):
        query = norm.input_tensors[0]
    layer = query._keras_history.operation
    return layer if isinstance(layer, keras.layers.Layer) and layer in model.layers else None
