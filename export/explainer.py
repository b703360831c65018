"""The computation behind the signatures: one forward pass, the gradient of each
image's chosen logit (before any softmax or sigmoid; a binary head's negative
class is -z) with respect to the target activations, and per image the map its
`method` asks for (only the methods a batch asks for are computed).

Per image, `class_index` c >= 0 names the class and -r the r-th highest logit
(-1 the top-1, -2 the runner-up, ...), so a caller gets the top-k classes' maps
by sending an image k times. A `method` code plus COUNTERFACTUAL asks for the
counterfactual map (the Grad-CAM paper, section 5): the method applied to the
negated gradients, showing what speaks against the class. Out-of-range values
give class_index -1 and an all-zero map.

Written once for any float dtype: the export compiles it in float32 under XLA,
verification runs it eagerly in float64 as the reference.
"""

import tensorflow as tf

from . import heads
from .methods import METHODS
from .preprocess import preprocess

COUNTERFACTUAL = 256  # added to a method code; above any method's code, so codes never clash


def _maps(activations, gradients, method):
    """Each image's map by its own method, computing only the methods the batch
    asks for: each method's map sits in a conditional that runs when some image
    wants it (XLA runs only the branch taken), so the cost of a batch does not
    grow with the number of methods exported."""
    raw = tf.zeros_like(activations[..., 0])
    for code, each in enumerate(METHODS):
        wanted = tf.equal(method, code)

        def computed(each=each, wanted=wanted):
            return tf.where(wanted[:, None, None], each.map(activations, gradients), tf.zeros_like(raw))

        raw = raw + tf.cond(tf.reduce_any(wanted), computed, lambda: tf.zeros_like(raw))
    return raw


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
            # Highest first; equal logits in index order, as argmax breaks ties.
            ranked = tf.argsort(logits, axis=-1, direction="DESCENDING", stable=True)
            by_rank = tf.gather(ranked, tf.clip_by_value(-class_index - 1, 0, num_classes - 1), batch_dims=1)
            chosen = tf.where(class_index < 0, by_rank, class_index)
            counterfactual = method >= COUNTERFACTUAL
            method = tf.where(counterfactual, method - COUNTERFACTUAL, method)
            valid = (class_index >= -num_classes) & (class_index < num_classes) & (method >= 0) & (method < len(METHODS))
            # Each image's own logit (negated for a counterfactual): summing over the batch keeps gradients per image.
            sign = tf.where(counterfactual, -1.0, 1.0) * tf.cast(valid, tf.float32)
            picked = tf.one_hot(chosen, num_classes, dtype=logits.dtype) * tf.cast(sign, logits.dtype)[:, None]
            score = tf.reduce_sum(logits * picked)
        gradients = tape.gradient(score, activations)
        activations = tf.cast(activations, self.dtype)
        gradients = tf.cast(gradients, self.dtype)

        raw = _maps(activations, gradients, method) * tf.cast(valid, self.dtype)[:, None, None]
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
