"""The computation behind the signatures: one forward pass, the gradient of each
image's chosen logit (before any softmax or sigmoid; a binary head's negative
class is -z) with respect to the target activations, every CAM method's map,
and per image the one its `method` asks for.

Written once for any float dtype: the export compiles it in float32 under XLA,
verification runs it eagerly in float64 as the reference.
"""

import tensorflow as tf

from . import heads
from .methods import METHODS
from .preprocess import preprocess


class Explainer:
    def __init__(self, forward, preprocess_mode: str, channels: int, head: str, dtype=tf.float32):
        self.forward = forward
        self.preprocess_mode = preprocess_mode
        self.channels = channels
        self.head = head
        self.dtype = dtype

    def _inputs(self, images):
        return preprocess(images, self.preprocess_mode, self.channels, self.dtype)

    def _logits(self, x):
        scores, activations = self.forward(x)
        return heads.logits(self.head, scores), activations

    def predict(self, images):
        logits, _ = self._logits(self._inputs(images))
        logits = tf.cast(logits, self.dtype)
        return {"logits": logits, "probabilities": heads.probabilities(self.head, logits)}

    def explain(self, images, class_index, method):
        x = self._inputs(images)
        with tf.GradientTape() as tape:
            # Watching the input records the pass even when every weight is frozen.
            tape.watch(x)
            logits, activations = self._logits(x)
            num_classes = tf.shape(logits)[-1]
            top1 = tf.argmax(logits, axis=-1, output_type=tf.int32)
            chosen = tf.where(class_index == -1, top1, class_index)
            valid = (chosen >= 0) & (chosen < num_classes) & (method >= 0) & (method < len(METHODS))
            # Each image's own logit: summing over the batch keeps gradients per image.
            picked = tf.one_hot(chosen, num_classes, dtype=logits.dtype) * tf.cast(valid, logits.dtype)[:, None]
            score = tf.reduce_sum(logits * picked)
        gradients = tape.gradient(score, activations)
        activations = tf.cast(activations, self.dtype)
        gradients = tf.cast(gradients, self.dtype)

        maps = tf.stack([m.map(activations, gradients) for m in METHODS], axis=1)
        raw = tf.gather(maps, tf.clip_by_value(method, 0, len(METHODS) - 1), axis=1, batch_dims=1)
        raw = raw * tf.cast(valid, self.dtype)[:, None, None]
        scale = tf.reduce_max(raw, axis=(1, 2))
        heatmap = tf.math.divide_no_nan(raw, scale[:, None, None])

        logits = tf.cast(logits, self.dtype)
        return {
            "logits": logits,
            "probabilities": heads.probabilities(self.head, logits),
            "class_index": tf.where(valid, chosen, -1),
            "heatmap": heatmap,
            "heatmap_scale": scale,
        }
