"""Gradient-weighted attention (Chefer, Gur and Wolf, ICCV 2021, "Generic
Attention-model Explainability", its rule for self-attention): R starts as the
identity and, layer by layer in the order they run, R += mean over heads of
ReLU(dA * A) R, where dA is the gradient of the explained logit with respect to
the attention probabilities A. That makes R = (I + W_L) ... (I + W_1); only the
class token's row is wanted, so it is computed from the left, a vector through
each layer (T^2 a layer, not T^3)."""

import tensorflow as tf

from .base import AttentionMethod


class GenericAttention(AttentionMethod):
    name = "generic-attention"
    gradients = True

    def class_row(self, probabilities, gradients):
        row = tf.one_hot(tf.zeros(tf.shape(probabilities[0])[:1], tf.int32), probabilities[0].shape[-1], dtype=probabilities[0].dtype)
        for each, gradient in reversed(list(zip(probabilities, gradients))):
            weighted = tf.reduce_mean(tf.nn.relu(gradient * each), axis=1)
            row = row + tf.einsum("nt,nts->ns", row, weighted)
        return row
