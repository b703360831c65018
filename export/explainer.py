"""The computation behind the signatures: one forward pass, the gradient of each
image's chosen logit (before any softmax or sigmoid; a binary head's negative
class is -z) with respect to the target activations, and per image the map its
`method` asks for (only the methods a batch asks for are computed).

Per image, `class_index` c >= 0 names the class and -r the r-th highest logit
(-1 the top-1, -2 the runner-up, ...), so a caller gets the top-k classes' maps
by sending an image k times. A `method` code plus COUNTERFACTUAL asks for the
counterfactual map (the Grad-CAM paper, section 5): the method applied to the
negated gradients, showing what speaks against the class. An export with n > 1
target layers takes LAYER_CODE x l more for the l-th layer's map (0: the
default), n for the mean and n + 1 for the maximum of all n maps (each scaled to
a maximum of 1; the LayerCAM authors fuse by maximum); every map comes at the
finest layer's size. The attention methods (methods/base.py AttentionMethod)
explain the whole model: offered only with an `attention` (attention.py), at the
default layer (layer code 0), their map at the size of the others. Out-of-range
values and methods not offered give class_index -1 and an all-zero map.

Written once for any float dtype: the export compiles it in float32 under XLA,
verification runs it eagerly in float64 as the reference.
"""

import contextlib

import tensorflow as tf

from . import heads
from .attention import Attention, recording
from .methods import ATTENTION, METHODS, CamMethod
from .preprocess import preprocess

COUNTERFACTUAL = 256  # added to a method code; above any method's code, so codes never clash
LAYER_CODE = 512  # times the layer's index, added to a method code (exports with several layers)
FUSIONS = ("mean", "max")  # layer indices n, n + 1: every layer's map, scaled to 1, fused


def _maps(activations, gradients, method):
    """Each image's map by its own method, computing only the methods the batch
    asks for: each method's map sits in a conditional that runs when some image
    wants it (XLA runs only the branch taken), so the cost of a batch does not
    grow with the number of methods exported."""
    raw = tf.zeros_like(activations[..., 0])
    for code, each in enumerate(METHODS):
        if not isinstance(each, CamMethod):
            continue
        wanted = tf.equal(method, code)

        def computed(each=each, wanted=wanted):
            return tf.where(wanted[:, None, None], each.map(activations, gradients), tf.zeros_like(raw))

        raw = raw + tf.cond(tf.reduce_any(wanted), computed, lambda: tf.zeros_like(raw))
    return raw


class Explainer:
    """forwards: one forward(x) -> (scores, activations) per exported target layer,
    the default first (graph.split); attention: the model's, for the attention methods."""

    def __init__(self, forwards, preprocess_mode: str, channels: int, head: str, dtype=tf.float32, attention: Attention | None = None):
        self.forwards = list(forwards)
        self.attention = attention
        self.preprocess_mode = preprocess_mode
        self.channels = channels
        self.head = head
        self.dtype = dtype
        self._sizes = None  # each layer's feature map (h, w), known once traced

    def _inputs(self, images):
        return preprocess(images, self.preprocess_mode, self.channels, self.dtype)

    def _logits(self, x, layer: int = 0):
        scores, activations = self.forwards[layer](x)
        return heads.logits(self.head, scores), activations

    def predict(self, images):
        return self.predict_inputs(self._inputs(images))

    def predict_inputs(self, x):
        """predict on the model's own input (already preprocessed)."""
        logits, _ = self._logits(x)
        logits = tf.cast(logits, self.dtype)
        return {"logits": logits, "probabilities": heads.probabilities(self.head, logits)}

    def _layer_maps(self, x, layer: int, picked, method):
        """Each image's map at another layer: its own forward and backward pass, for
        the classes (and signs) `picked` at the default layer."""
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits, activations = self._logits(x, layer)
            score = tf.reduce_sum(logits * tf.cast(picked, logits.dtype))
        gradients = tape.gradient(score, activations)
        return _maps(tf.cast(activations, self.dtype), tf.cast(gradients, self.dtype), method)

    def explain(self, images, class_index, method):
        return self.explain_inputs(self._inputs(images), class_index, method)

    def explain_inputs(self, x, class_index, method):
        """explain on the model's own input (already preprocessed)."""
        n = len(self.forwards)
        # method = base + COUNTERFACTUAL * counterfactual + LAYER_CODE * layer (module docstring).
        layer = tf.math.floordiv(method, LAYER_CODE)
        method = method - layer * LAYER_CODE
        counterfactual = method >= COUNTERFACTUAL
        method = tf.where(counterfactual, method - COUNTERFACTUAL, method)
        # Persistent: the attention methods take their own gradient when some image asks for one.
        with tf.GradientTape(persistent=self.attention is not None) as tape:
            # Watching the input records the pass even when every weight is frozen.
            tape.watch(x)
            with self._recording() as probabilities:
                logits, activations = self._logits(x)
            num_classes = tf.shape(logits)[-1]
            # Highest first; equal logits in index order, as argmax breaks ties.
            ranked = tf.argsort(logits, axis=-1, direction="DESCENDING", stable=True)
            by_rank = tf.gather(ranked, tf.clip_by_value(-class_index - 1, 0, num_classes - 1), batch_dims=1)
            chosen = tf.where(class_index < 0, by_rank, class_index)
            layers = n + len(FUSIONS) if n > 1 else 1
            valid = (class_index >= -num_classes) & (class_index < num_classes) & (method >= 0) & (method < len(METHODS))
            valid = valid & (layer >= 0) & (layer < layers) & self._offered(method, counterfactual, layer)
            # Each image's own logit (negated for a counterfactual): summing over the batch keeps gradients per image.
            sign = tf.where(counterfactual, -1.0, 1.0) * tf.cast(valid, tf.float32)
            picked = tf.one_hot(chosen, num_classes, dtype=logits.dtype) * tf.cast(sign, logits.dtype)[:, None]
            score = tf.reduce_sum(logits * picked)
        gradients = tape.gradient(score, activations)
        raw = _maps(tf.cast(activations, self.dtype), tf.cast(gradients, self.dtype), method)
        if n > 1:
            raw = self._chosen_layer(x, raw, layer, picked, method)
        if self.attention is not None:
            raw = raw + self._attention_maps(tape, score, probabilities, method, raw.shape[1:3])
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

    def _recording(self):
        return recording() if self.attention is not None else contextlib.nullcontext([])

    def _offered(self, method, counterfactual, layer):
        """Per image, whether its method is offered as asked (valid codes assumed): an
        attention method only with attention, at the default layer, and counterfactual
        only where it means something."""
        code = tf.clip_by_value(method, 0, len(METHODS) - 1)
        offered = tf.gather([isinstance(m, CamMethod) or self.attention is not None for m in METHODS], code)
        signed = tf.gather([getattr(m, "counterfactual", True) for m in METHODS], code)
        default_layer = tf.gather([isinstance(m, CamMethod) for m in METHODS], code) | tf.equal(layer, 0)
        return offered & (signed | ~counterfactual) & default_layer

    def _attention_maps(self, tape, score, probabilities, method, size):
        """Each image's attention-method map (zero for the others) at `size`; each method
        runs, its gradients included, only when some image of the batch asks for it."""
        out = tf.zeros([tf.shape(method)[0], *size], self.dtype)
        for code in ATTENTION:
            each, wanted = METHODS[code], tf.equal(method, code)

            def computed(each=each):
                gradients = tape.gradient(score, probabilities) if each.gradients else None
                maps = tf.cast(self.attention.maps(each.class_row(probabilities, gradients)), self.dtype)
                if tuple(self.attention.grid) != tuple(size):
                    maps = tf.cast(tf.image.resize(maps[..., None], size, method="bilinear")[..., 0], self.dtype)
                return maps

            maps = tf.cond(tf.reduce_any(wanted), computed, lambda: tf.zeros_like(out))
            out = out + tf.where(wanted[:, None, None], maps, tf.zeros_like(out))
        return out

    def layer_sizes(self, images) -> list[tuple[int, int]]:
        """Each target layer's feature map (h, w) for these images' size."""
        return self._feature_sizes(self._inputs(images))

    def _feature_sizes(self, x) -> list[tuple[int, int]]:
        """Each layer's (h, w), from one call per layer the first time (inside a
        traced function the call only contributes its static shape and is pruned)."""
        if self._sizes is None:
            self._sizes = [tuple(int(d) for d in forward(x)[1].shape[1:3]) for forward in self.forwards]
        return self._sizes

    def _chosen_layer(self, x, default_maps, layer, picked, method):
        """Per image the map of its layer, or a fusion of every layer's map (each
        scaled to a maximum of 1), all at the finest layer's size (bilinear).
        Another layer's pass runs only when some image of the batch wants it."""
        n = len(self.forwards)
        sizes = self._feature_sizes(x)
        finest = max(sizes, key=lambda hw: hw[0] * hw[1])
        maps = []
        for i in range(n):
            if i == 0:
                each = default_maps
            else:
                wanted = tf.reduce_any((layer == i) | (layer >= n))
                empty = tf.zeros([tf.shape(x)[0], *sizes[i]], self.dtype)
                each = tf.cond(wanted, lambda i=i: self._layer_maps(x, i, picked, method), lambda empty=empty: empty)
            if sizes[i] != finest:
                each = tf.cast(tf.image.resize(each[..., None], finest, method="bilinear")[..., 0], self.dtype)
            maps.append(each)
        stacked = tf.stack(maps, axis=1)  # [N, layers, h, w]
        alone = tf.gather(stacked, tf.clip_by_value(layer, 0, n - 1), batch_dims=1)
        scaled = tf.math.divide_no_nan(stacked, tf.reduce_max(stacked, axis=(2, 3), keepdims=True))
        fused = {"mean": tf.reduce_mean(scaled, axis=1), "max": tf.reduce_max(scaled, axis=1)}
        for k, name in enumerate(FUSIONS):
            alone = tf.where((layer == n + k)[:, None, None], fused[name], alone)
        return alone
