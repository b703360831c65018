"""LayerCAM (Jiang et al. 2021): ReLU(sum_k ReLU(g_k) * A_k), positive gradients
as per-position weights; meant for earlier, higher-resolution layers too."""

import tensorflow as tf

from .base import SummedTerms


class LayerCam(SummedTerms):
    name = "layercam"

    def terms(self, activations, gradients):
        return tf.nn.relu(gradients) * activations
