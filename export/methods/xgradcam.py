"""XGrad-CAM (Fu et al. 2020): w_k = sum_ij(g * A) / (sum_ij A + eps), the
gradients weighted by the activations they act on."""

import tensorflow as tf

from .base import CamMethod

EPSILON = 1e-7


class XGradCam(CamMethod):
    name = "xgradcam"

    def weights(self, activations, gradients):
        return tf.reduce_sum(gradients * activations, axis=(1, 2)) / (tf.reduce_sum(activations, axis=(1, 2)) + EPSILON)

    def scale(self, activations, gradients):
        """A weight is a quotient of two sums over positions, both of terms of both signs
        where activations are (a LayerNorm's outputs): its rounding is relative to
        (sum|g A| + |w| sum|A|) / |sum A + eps|, which grows without bound as sum A cancels."""
        w = self.weights(activations, gradients)
        numerator = tf.reduce_sum(tf.abs(gradients * activations), axis=(1, 2)) + tf.abs(w) * tf.reduce_sum(tf.abs(activations), axis=(1, 2))
        magnitude = numerator / tf.abs(tf.reduce_sum(activations, axis=(1, 2)) + EPSILON)
        return tf.einsum("nhwk,nk->nhw", tf.abs(activations), magnitude)
