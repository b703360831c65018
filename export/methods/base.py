"""The shared shape of a CAM method: from the target activations A and the
gradients g = d(logit_c)/dA, both [N,h,w,K], a non-negative map [N,h,w] per
image that never mixes images. Most methods are ReLU(sum_k w_k A_k) with
per-channel weights w and say only how w comes from A and g; SummedTerms
methods give their terms position by position; the others override map() and
scale().

Each method also states the scale its map is judged at: verification compares
a float32 map with a float64 one relative to the magnitude of the terms the map
is summed from, not to the map's own maximum, which terms of both signs (a
LayerNorm's outputs, a counterfactual) can cancel to almost nothing while
float32 rounding stays relative to the terms."""

import tensorflow as tf


class CamMethod:
    name: str = ""

    def weights(self, activations, gradients):
        """Per-image, per-channel weights [N,K]."""
        raise NotImplementedError

    def map(self, activations, gradients):
        w = self.weights(activations, gradients)
        return tf.nn.relu(tf.einsum("nhwk,nk->nhw", activations, w))

    def terms(self, activations, gradients):
        """[N,h,w,K]: what map() sums over channels before its ReLU."""
        return activations * self.weights(activations, gradients)[:, None, None, :]

    def scale(self, activations, gradients):
        """[N,h,w]: the magnitude of the summed terms, sum_k |term_k| per position."""
        return tf.reduce_sum(tf.abs(self.terms(activations, gradients)), axis=-1)


class SummedTerms(CamMethod):
    """A method whose terms are given position by position rather than through
    channel weights: its map is ReLU(sum_k term_k)."""

    def map(self, activations, gradients):
        return tf.nn.relu(tf.reduce_sum(self.terms(activations, gradients), axis=-1))


class AttentionMethod:
    """A transformer-native method: from the attention probabilities [N, heads, T, T]
    of every self-attention layer, in the order they run, (and the gradients of the
    explained logit with respect to them when `gradients`), the class token's row
    [N, T] of a token-to-token relevance; the map is that row over the patch tokens
    (export/attention.py). It explains the whole model, not a target layer."""

    name: str = ""
    gradients: bool = False
    counterfactual: bool = True  # whether the negated gradients mean anything to it

    def class_row(self, probabilities, gradients):
        raise NotImplementedError
