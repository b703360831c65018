"""XGrad-CAM (Fu et al. 2020): w_k = sum_ij(g * A) / (sum_ij A + eps), the
gradients weighted by the activations they act on."""

import tensorflow as tf

from .base import CamMethod

EPSILON = 1e-7


class XGradCam(CamMethod):
    name = "xgradcam"

    def weights(self, activations, gradients):
        return tf.reduce_sum(gradients * activations, axis=(1, 2)) / (tf.reduce_sum(activations, axis=(1, 2)) + EPSILON)
