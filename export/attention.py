"""The attention probabilities of a vision transformer, for the attention methods
(methods/rollout.py, methods/generic_attention.py): every keras MultiHeadAttention
a forward runs, in the order it runs them, [N, heads, T, T] over the tokens of the
default target's patch grid; the map is the class token's row over the patch
tokens, on that grid.

Keras computes the probabilities only when a call asks for them and hands them
back only to that call, and keras-hub's encoder blocks call their attention
themselves, so no public hook reaches them: each MultiHeadAttention's
`_compute_attention` is wrapped once, on the instance, to ask for them (Keras
then computes them explicitly instead of through its fused dot_product_attention:
the same values to rounding) and record them while `recording()` is open. Closed,
the wrapper calls through unchanged, so `predict` keeps Keras's own path.

A model qualifies when every attention it runs is self-attention over the tokens
of that grid with a class token in front (a prefix); models without attention,
with windowed attention of their own (Swin) or without a class token are refused
with the reason."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import keras
import tensorflow as tf

from . import tokens
from .nodes import TargetLayerError

_RECORDING: list[list] = []  # the open recordings, innermost last


class Attention(NamedTuple):
    prefix: int  # the class token is token 0, the patch tokens follow the prefix
    grid: tuple[int, int]

    def maps(self, class_row):
        """The class token's row [N, T] over the patches, [N, gh, gw]."""
        return tf.reshape(class_row[:, self.prefix :], [-1, *self.grid])


def _attention_layers(model) -> list:
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, keras.layers.MultiHeadAttention)]


def _tap(layer) -> None:
    if getattr(layer, "_camserve_recorded", False):
        return
    original = layer._compute_attention

    def compute(query, key, value, attention_mask=None, training=None, return_attention_scores=False, **kwargs):
        if not _RECORDING:
            return original(query, key, value, attention_mask, training, return_attention_scores, **kwargs)
        output, probabilities = original(query, key, value, attention_mask, training, True, **kwargs)
        _RECORDING[-1].append(probabilities)
        return output, probabilities if return_attention_scores else None

    layer._compute_attention, layer._camserve_recorded = compute, True


@contextlib.contextmanager
def recording():
    """A list that collects the probabilities of every attention run until the block ends."""
    taken: list = []
    _RECORDING.append(taken)
    try:
        yield taken
    finally:
        _RECORDING.pop()


def find(model, forward, x) -> tuple[Attention | None, str | None]:
    """(the model's attention and a note on it) or (None, why the model has none camserve
    can use; None for a model without MultiHeadAttention), from one run of `forward` (the
    default target's) on a sample input `x`."""
    layers = _attention_layers(model)
    if not layers:
        return None, None
    try:
        path, _ = tokens.default(model) or (None, None)
        at = tokens.grid_at(model, path) if path else None
    except TargetLayerError as error:
        return None, f"the model's tokens have no patch grid ({error})"
    if at is None:
        return None, "the model's main path does not end in tokens"
    if at.prefix == 0:
        return None, "the model has no class token (its head pools every token)"
    for layer in layers:
        _tap(layer)
    with recording() as taken:
        forward(x)
    expected = at.prefix + at.grid[0] * at.grid[1]
    shapes = {tuple(p.shape[2:]) for p in taken}
    if not taken or shapes != {(expected, expected)}:
        found = ", ".join(f"{list(s)}" for s in sorted(shapes)) or "none ran"
        return None, f"they need self-attention over the {expected} tokens of the {at}; this model's attention is over {found}"
    note = f"attention methods over {len(taken)} attention layers, the class token's row on the {at}"
    return Attention(at.prefix, at.grid), note
