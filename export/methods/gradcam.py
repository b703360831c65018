"""Grad-CAM (Selvaraju et al. 2017): weights are the spatial mean of the gradients."""

import tensorflow as tf

from .base import CamMethod


class GradCam(CamMethod):
    name = "gradcam"

    def weights(self, activations, gradients):
        return tf.reduce_mean(gradients, axis=(1, 2))
