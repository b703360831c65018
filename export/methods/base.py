"""The shared shape of a CAM method: from the target activations A and the
gradients g = d(logit_c)/dA, both [N,h,w,K], a non-negative map [N,h,w] per
image that never mixes images. Most methods are ReLU(sum_k w_k A_k) with
per-channel weights w and say only how w comes from A and g; the others
override map()."""

import tensorflow as tf


class CamMethod:
    name: str = ""

    def weights(self, activations, gradients):
        """Per-image, per-channel weights [N,K]."""
        raise NotImplementedError

    def map(self, activations, gradients):
        w = self.weights(activations, gradients)
        return tf.nn.relu(tf.einsum("nhwk,nk->nhw", activations, w))
