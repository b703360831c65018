"""HiResCAM (Draelos and Carin 2020): ReLU(sum_k g_k * A_k), the gradients
multiplied in position by position instead of averaged first, so the map shows
what the logit actually depends on at each position."""

import tensorflow as tf

from .base import CamMethod


class HiResCam(CamMethod):
    name = "hirescam"

    def map(self, activations, gradients):
        return tf.nn.relu(tf.reduce_sum(gradients * activations, axis=-1))
