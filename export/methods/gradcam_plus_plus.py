"""Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19) with the exponential's factor
left out: alpha = g^2 / (2 g^2 + sum_ab A * g^3), zero where g = 0;
weights = sum over positions of alpha * ReLU(g)."""

import tensorflow as tf

from .base import CamMethod

EPSILON = 1e-7


class GradCamPlusPlus(CamMethod):
    name = "gradcam++"

    def weights(self, activations, gradients):
        g2 = tf.square(gradients)
        g3 = g2 * gradients
        activation_sum = tf.reduce_sum(activations, axis=(1, 2), keepdims=True)
        alpha = g2 / (2.0 * g2 + activation_sum * g3 + EPSILON)
        alpha = tf.where(gradients != 0.0, alpha, tf.zeros_like(alpha))
        return tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=(1, 2))
