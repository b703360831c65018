"""LayerCAM (Jiang et al. 2021): ReLU(sum_k ReLU(g_k) * A_k), positive gradients
as per-position weights; meant for earlier, higher-resolution layers too."""

import tensorflow as tf

from .base import CamMethod


class LayerCam(CamMethod):
    name = "layercam"

    def map(self, activations, gradients):
        return tf.nn.relu(tf.reduce_sum(tf.nn.relu(gradients) * activations, axis=-1))
