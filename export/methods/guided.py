"""Grad-CAM with guided-gradient weights (the variant in the second seed):
gradients are kept only where both the activation and the gradient are
positive, then averaged spatially into channel weights. This is not Guided
Grad-CAM (Selvaraju et al.), which multiplies a map by guided backpropagation at
pixel resolution; the name `guided` stays for the exports and clients that use
it, and the README says what it computes."""

import tensorflow as tf

from .base import CamMethod


class GuidedGradients(CamMethod):
    name = "guided"

    def weights(self, activations, gradients):
        keep = tf.logical_and(activations > 0.0, gradients > 0.0)
        return tf.reduce_mean(tf.where(keep, gradients, tf.zeros_like(gradients)), axis=(1, 2))
