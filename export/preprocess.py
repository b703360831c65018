"""Pixel preprocessing, compiled into the signature so callers send plain uint8 RGB."""

import tensorflow as tf

from .choices import PREPROCESS_MODES

_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _none(x):
    return x


def _scale(x):
    return x / 255.0


def _tf(x):
    return x / 127.5 - 1.0


def _caffe(x):
    return x[..., ::-1] - tf.constant(_CAFFE_MEAN_BGR, x.dtype)


def _torch(x):
    return (x / 255.0 - tf.constant(_IMAGENET_MEAN_RGB, x.dtype)) / tf.constant(_IMAGENET_STD_RGB, x.dtype)


MODES = dict(zip(PREPROCESS_MODES, (_none, _scale, _tf, _caffe, _torch), strict=True))  # in PREPROCESS_MODES' order


def preprocess(images, mode: str, channels: int, dtype=tf.float32):
    """uint8 RGB [N,H,W,3] -> the model's input; a 1-channel model gets luminance."""
    x = tf.cast(images, dtype)
    if channels == 1:
        x = tf.image.rgb_to_grayscale(x)
    return MODES[mode](x)
