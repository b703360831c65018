"""Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise):
ReLU(sum_k ReLU(g_k * A_k)); each channel's positive contributions only."""

import tensorflow as tf

from .base import SummedTerms


class GradCamElementWise(SummedTerms):
    name = "gradcam-elementwise"

    def terms(self, activations, gradients):
        return tf.nn.relu(gradients * activations)
