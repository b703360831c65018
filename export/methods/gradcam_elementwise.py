"""Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise):
ReLU(sum_k ReLU(g_k * A_k)); each channel's positive contributions only."""

import tensorflow as tf

from .base import CamMethod


class GradCamElementWise(CamMethod):
    name = "gradcam-elementwise"

    def map(self, activations, gradients):
        return tf.reduce_sum(tf.nn.relu(gradients * activations), axis=-1)  # a sum of ReLUs needs no outer ReLU
