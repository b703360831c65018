"""The shared shape of a CAM method: map = ReLU(sum_k w_k A_k) with per-image,
per-channel weights w. A method only says how its weights come from the target
activations A and the gradients g = d(logit_c)/dA, both [N,h,w,K]."""

import tensorflow as tf


class CamMethod:
    name: str = ""

    def weights(self, activations, gradients):
        """Per-image, per-channel weights [N,K]; never mixes images."""
        raise NotImplementedError

    def map(self, activations, gradients):
        w = self.weights(activations, gradients)
        return tf.nn.relu(tf.einsum("nhwk,nk->nhw", activations, w))
