"""Attention rollout (Abnar and Zuidema 2020, "Quantifying Attention Flow in
Transformers"): each layer's attention averaged over heads, the identity added
for the residual path and rows normalised, multiplied from the first layer to the
last: A_L ... A_1. Only the class token's row is wanted, so it is computed as
e_0 A_L ... A_1 from the left, a vector through each layer (T^2 a layer, not
T^3). It uses no gradient, so it is the same map for every class and has no
counterfactual."""

import tensorflow as tf

from .base import AttentionMethod


class AttentionRollout(AttentionMethod):
    name = "attention-rollout"
    counterfactual = False

    def class_row(self, probabilities, gradients):
        row = tf.one_hot(tf.zeros(tf.shape(probabilities[0])[:1], tf.int32), probabilities[0].shape[-1], dtype=probabilities[0].dtype)
        for each in reversed(probabilities):
            mean = tf.reduce_mean(each, axis=1)
            # Rows of the head mean sum to 1, so (mean + I) / 2 is the row-normalised mean + I.
            row = 0.5 * (tf.einsum("nt,nts->ns", row, mean) + row)
        return row
