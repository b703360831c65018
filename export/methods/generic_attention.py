"""Gradient-weighted attention (Chefer, Gur and Wolf, ICCV 2021, "Generic
Attention-model Explainability", its rule for self-attention): R starts as the
identity and, layer by layer in the order they run, R += mean over heads of
ReLU(dA * A) R, where dA is the gradient of the explained logit with respect to
the attention probabilities A."""

import tensorflow as tf

from .base import AttentionMethod


class GenericAttention(AttentionMethod):
    name = "generic-attention"
    gradients = True

    def relevance(self, probabilities, gradients):
        tokens = probabilities[0].shape[-1]
        relevance = tf.eye(tokens, dtype=probabilities[0].dtype)[None]
        for each, gradient in zip(probabilities, gradients):
            weighted = tf.reduce_mean(tf.nn.relu(gradient * each), axis=1)
            relevance = relevance + tf.matmul(weighted, relevance)
        return relevance
