"""Attention rollout (Abnar and Zuidema 2020, "Quantifying Attention Flow in
Transformers"): each layer's attention averaged over heads, the identity added
for the residual path and rows normalised, multiplied from the first layer to the
last. It uses no gradient, so it is the same map for every class and has no
counterfactual."""

import tensorflow as tf

from .base import AttentionMethod


class AttentionRollout(AttentionMethod):
    name = "attention-rollout"
    counterfactual = False

    def relevance(self, probabilities, gradients):
        tokens = probabilities[0].shape[-1]
        eye = tf.eye(tokens, dtype=probabilities[0].dtype)
        rollout = eye[None]
        for each in probabilities:
            mixed = tf.reduce_mean(each, axis=1) + eye
            rollout = tf.matmul(mixed / tf.reduce_sum(mixed, axis=-1, keepdims=True), rollout)
        return rollout
