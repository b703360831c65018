"""Token sequences as feature maps, for vision transformers.

A layer whose output is [N, T, D] is a feature map once its leading non-patch
tokens (class, distillation, register tokens) are dropped and the rest reshaped
to the patch grid [N, gh, gw, D], row by row as a Conv2D patch embedding's
output is flattened; every CAM method then works on the grid unchanged.

The grid is read from the model, never guessed from T: it is the spatial size
of the 4-D map the tokens were made from (the patch embedding's output, which
Keras sized from the input size and the Conv2D's kernel and strides), found by
walking the graph back from the target to the nearest 4-D tensors; the prefix
count is T - gh * gw. A patch embedding written as one layer from the image
(keras-hub's) has no such map inside the graph: its own `patch_size` and the
image size it is given make the grid; a stage that merges patches (Swin) has
s x s fewer tokens, with no prefix, on a grid s times coarser. Tokens with no
grid the model gives, or fewer tokens than grid cells, are refused.

Blocks a layer calls in turn (keras-hub's ViT and DeiT encoders hold them in
`encoder_layers`, not as graph nodes) are targets too: their output is taken,
as a patch map, from inside the layer's call (block_body).

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

import math
from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from . import nodes
from .nodes import TargetLayerError


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
        raise TargetLayerError(f"layer {name!r} has an open token count {list(tensor.shape)}: give --input-size HxW")
    g = nodes.functional(model)
    maps = _source_maps(g, tensor)
    if all(isinstance(t._keras_history.operation, keras.layers.InputLayer) for t in maps):
        if (embedded := _embedding_grid(g, tensor, tokens)) is not None:
            return embedded
    sizes = {tuple(t.shape[1:3]) for t in maps}
    if len(sizes) != 1 or None in next(iter(sizes)):
        found = ", ".join(f"{t._keras_history.operation.name} {list(t.shape[1:])}" for t in maps) or "none"
        raise TargetLayerError(
            f"cannot tell the patch grid of layer {name!r} ({tokens} tokens): its tokens must come from one 4-D "
            f"patch map of static size (a Conv2D patch embedding), found {found}"
        )
    (gh, gw), source = next(iter(sizes)), maps[0]._keras_history.operation
    if isinstance(source, keras.layers.InputLayer) or tokens < gh * gw:
        raise TargetLayerError(
            f"layer {name!r} has {tokens} tokens, made from {source.name!r} {list(maps[0].shape[1:])}, which is not "
            "their patch grid (tokens made from the image by a custom layer have no grid camserve can read)"
        )
    return TokenGrid(tokens - gh * gw, (int(gh), int(gw)), source.name)


def _embedding_grid(g, tensor, tokens: int) -> TokenGrid | None:
    """The grid of tokens made from the image by one patch-embedding layer that says its
    `patch_size`; None when no layer on the way back from `tensor` does."""
    stack, seen = [tensor], set()
    while stack:
        node = nodes.producer(g, stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        layer, inputs = node.operation, node.input_tensors
        patch = getattr(layer, "patch_size", None)
        if patch is None or len(inputs) != 1 or len(inputs[0].shape) != 4:
            stack.extend(inputs)
            continue
        ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
        h, w = inputs[0].shape[1:3]
        if h is None or w is None:
            return None
        gh, gw = h // ph, w // pw
        made = node.output_tensors[0].shape[1]
        if tokens == made and made >= gh * gw:
            return TokenGrid(made - gh * gw, (gh, gw), layer.name)
        merged = math.isqrt(gh * gw // tokens) if tokens and made == gh * gw else 0
        if merged > 1 and merged * merged * tokens == gh * gw and gh % merged == 0 and gw % merged == 0:
            return TokenGrid(0, (gh // merged, gw // merged), f"{layer.name}, merged {merged} x {merged}")
        return None
    return None


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
        elif (node := nodes.producer(g, t)) is not None:
            stack.extend(node.input_tensors)
    return found


def body(model, model_in, scores, target):
    """x -> (scores, the target's patch map) with the map upstream of the scores, so that
    gradients can be taken against it: the model runs up to the target, the tokens are
    reshaped to the grid and back, and the rest of the model runs from them (given the
    input too, which paths around the target, such as a residual, still read)."""
    at = grid(model, target)
    before = keras.Model(model_in, target)
    # The target may be the scores themselves (a backbone's last layer, its model's output).
    after = (lambda inputs, training: inputs[1]) if scores is target else keras.Model([model_in, target], scores)

    def forward(x, training=False):
        tokens = before(x, training=training)
        patch_map = at.to_map(tokens)
        return after([x, at.to_tokens(tokens, patch_map)], training=training), patch_map

    return forward


def _first_output(model, layer):
    return nodes.node(model, layer).output_tensors[0]


def _token_output(model, path):
    """(its model, the output) of the layer (or block) at `path`: a block's is its encoder's
    (blocks keep the token count and width), an encoder's its first (DeiT's also returns
    its scores)."""
    owner = nodes.layer_at(model, path[:-1])
    if not nodes.is_model(owner):
        parent = nodes.layer_at(model, path[:-2])
        return parent, _first_output(parent, owner)
    return owner, _first_output(owner, owner.get_layer(path[-1]))


def shape_at(model, path) -> tuple:
    """The output shape of the layer (or block) at `path`."""
    return tuple(_token_output(model, path)[1].shape)


def grid_at(model, path) -> TokenGrid:
    """grid() of the token layer (or block) at `path`."""
    return grid(*_token_output(model, path))


# The blocks whose output a forward is taking, by id: a block's call is wrapped once and
# passes its output through unchanged when no forward is running (or when tracing for
# another target).
_TAKING: dict[int, list] = {}


def block_body(model, model_in, scores, encoder, name: str):
    """x -> (scores, the patch map of block `name`'s output): as body(), with the map taken
    inside `encoder`'s call, where the block's output is reshaped to the grid and back so
    that the rest of the encoder runs from it."""
    block = next(b for b in nodes.blocks(encoder) if b.name == name)
    at = grid(model, _first_output(model, encoder))
    if not getattr(block, "_camserve_taps", False):
        original = block.call

        def call(*args, **kwargs):
            out = original(*args, **kwargs)
            taken = _TAKING.get(id(block))
            if taken is None:
                return out
            first = out[0] if isinstance(out, tuple) else out  # DeiT's blocks also return their scores
            patch_map = at.to_map(first)
            taken.append(patch_map)
            first = at.to_tokens(first, patch_map)
            return (first, *out[1:]) if isinstance(out, tuple) else first

        block.call, block._camserve_taps = call, True
    run = keras.Model(model_in, scores)

    def forward(x, training=False):
        _TAKING[id(block)] = taken = []
        try:
            y = run(x, training=training)
        finally:
            del _TAKING[id(block)]
        return y, taken[-1]

    return forward


class TokenLayer(NamedTuple):
    path: str  # dotted
    tokens: int
    channels: int
    grid: TokenGrid
    main: bool  # on every input-to-output path (nodes.walk)


def candidates(model) -> list[TokenLayer]:
    """Every layer with a token output whose patch grid the model gives, nested models included."""
    found = []
    for path, layer, main in nodes.walk(model):
        if nodes.is_model(layer) or isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            shape = shape_at(model, path)
            if is_tokens(shape):
                found.append(TokenLayer(".".join(path), shape[1], shape[2], grid_at(model, path), main))
        except (TargetLayerError, ValueError, AttributeError):
            continue  # no grid: not a map camserve can explain
    return found


def _final(model, path=()):
    """(path, its model, layer) of the last map or token sequence on `model`'s main path, in
    graph order, inside the nested model that is it (a backbone); None when there is none."""
    main = nodes.main_layers(model)

    def dims(layer):
        try:
            return len(_first_output(model, layer).shape)
        except (TargetLayerError, IndexError):
            return 0

    mapped = [layer for layer in model.layers if layer in main and not isinstance(layer, keras.layers.InputLayer) and dims(layer) in (3, 4)]
    if not mapped:
        return None
    last = mapped[-1]
    if nodes.is_model(last) and dims(last) == 3:
        return _final(last, path + (last.name,))
    return path + (last.name,), model, last


def default(model) -> tuple[tuple[str, ...], str] | None:
    """(path, note) of a transformer classifier's default target (module docstring);
    None when the model's main path does not end in a token sequence."""
    found = _final(model)
    if found is None or not is_tokens(_first_output(found[1], found[2]).shape):
        return None
    path, owner, final = found
    name, tokens = ".".join(path), grid(owner, _first_output(owner, final))
    # The same tokens in the outer graph, for the probe: the outermost nested model's output.
    if not _reads_only_prefix(model, _first_output(model, model.get_layer(path[0])), tokens.prefix):
        return path, f"default target {name} ({tokens}): the head pools the patch tokens of the final token output"
    block_in = _last_block_input(owner)
    if block_in is None:
        raise TargetLayerError(
            f"the head of {model.name!r} reads only the prefix tokens of {name!r}, whose patch tokens therefore "
            "get zero gradient, and camserve cannot find the last transformer block's input (a layer feeding the "
            "last MultiHeadAttention): choose a token layer before the last block's attention with --layer"
        )
    chosen = path[:-1] + block_in
    return chosen, (
        f"default target {'.'.join(chosen)} ({grid_at(model, chosen)}), the last transformer block's input: "
        f"the head reads only the class token, so the patch tokens of {name} get zero gradient"
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


def _last_block_input(model) -> tuple[str, ...] | None:
    """The path, from `model`, of the layer whose output is the last transformer block's
    input: the output of the block before it when an encoder layer calls its blocks in turn
    (or the layer feeding the encoder when it has one block); else the input of the LayerNormalization
    before the last MultiHeadAttention (pre-norm), or its query. None when no layer computes it."""
    g = nodes.functional(model)
    encoders = [layer for layer in model.layers if nodes.blocks(layer)]  # the last before `final`, or `final`
    if encoders:
        held = nodes.blocks(encoders[-1])
        if len(held) > 1:
            return encoders[-1].name, held[-2].name
        query = nodes.node(model, encoders[-1]).input_tensors[0]
    else:
        attention = [layer for layer in model.layers if isinstance(layer, keras.layers.MultiHeadAttention)]
        if not attention:
            return None
        query = nodes.node(model, attention[-1]).input_tensors[0]
        norm = nodes.producer(g, query)
        if norm is not None and isinstance(norm.operation, keras.layers.LayerNormalization):
            query = norm.input_tensors[0]
    layer = query._keras_history.operation
    return (layer.name,) if isinstance(layer, keras.layers.Layer) and layer in model.layers else None
