"""Guided gradients (the variant in the second seed): gradients are kept only
where both the activation and the gradient are positive, then averaged spatially."""

import tensorflow as tf

from .base import CamMethod


class GuidedGradients(CamMethod):
    name = "guided"

    def weights(self, activations, gradients):
        keep = tf.logical_and(activations > 0.0, gradients > 0.0)
        return tf.reduce_mean(tf.where(keep, gradients, tf.zeros_like(gradients)), axis=(1, 2))
