"""What an export saves: `explain` and `predict`, its signatures, are
tf.functions with a free batch dimension, XLA-compiled unless `xla` is off
(plain graph mode measured faster for some small models on CPU).

With an InputContract the module also takes the model's own input, as TF Serving
clients send it (already preprocessed, in the model's dtype): `serve`, what
`model.export()` would serve, and `explain_input`, explain on that input."""

from dataclasses import dataclass

import tensorflow as tf

from . import heads
from .explainer import Explainer

# What explain answers; a model's own output alias may not take one of these names for something else.
EXPLAIN_OUTPUTS = ("logits", "probabilities", "class_index", "heatmap", "heatmap_scale")


@dataclass(frozen=True)
class InputContract:
    """The model's own input and output, by the names its serving signature gives them."""

    input: str  # the input's alias
    output: str  # the output's alias
    dtype: tf.DType
    shape: tuple  # (H, W, C)
    head: str  # head kind
    stripped: bool  # the head's op was stripped to reach the logits (graph.Head)

    def original(self, outputs):
        """What the model outputs, from the explained outputs of the same pass."""
        return heads.model_output(self.head, self.stripped, outputs)


class CamModule(tf.Module):
    def __init__(self, model, explainer: Explainer, input_size, xla: bool = True, contract: InputContract | None = None, name="camserve"):
        # A tf.Module itself: tf.functions of a plain object's bound methods were once given
        # another method's trace (serve called with explain_input's arguments, one run in a
        # long-lived one-core worker); a Module's never were.
        super().__init__(name=name)
        # What tf.saved_model.save is given besides the signatures: the variables they read,
        # and neither a tf.function nor the Keras model. Save traces every tf.function it finds
        # again, under a key of its own (the save context's variable policy): a second trace of
        # the whole model (half of keras-hub MiT's export). And it walks, saves and loads every
        # layer of a Keras model as an object: InceptionV3's save took 10.7 s with its layers,
        # 4.5 s without; its load 4.0 s and 1.8 s (benchmarks/export_steps.py). The signatures
        # are the SavedModel's API.
        self.root = tf.Module(name=name)
        self.root.weights = list(model.variables)
        self._explainer = explainer
        self._contract = contract
        images = tf.TensorSpec([None, *input_size, 3], tf.uint8, name="images")
        per_image = [tf.TensorSpec([None], tf.int32, name=n) for n in ("class_index", "method")]
        self.explain = tf.function(self._explain, jit_compile=xla, input_signature=[images, *per_image])
        self.predict = tf.function(self._predict, jit_compile=xla, input_signature=[images])
        if contract is not None:
            x = tf.TensorSpec([None, *contract.shape], contract.dtype, name=contract.input)
            self.serve = tf.function(self._serve, jit_compile=xla, input_signature=[x])
            self.explain_input = tf.function(self._explain_input, jit_compile=xla, input_signature=[x, *per_image])

    # TensorFlow requires the bound method's first parameter to be called `self`.
    def _explain(self, images, class_index, method):
        return self._explainer.explain(images, class_index, method)

    def _predict(self, images):
        return self._explainer.predict(images)

    def _serve(self, x):
        outputs = self._explainer.predict_inputs(tf.cast(x, self._explainer.dtype))
        return {self._contract.output: self._contract.original(outputs)}

    def _explain_input(self, x, class_index, method):
        outputs = self._explainer.explain_inputs(tf.cast(x, self._explainer.dtype), class_index, method)
        return {self._contract.output: self._contract.original(outputs), **outputs}

    def signatures(self):
        explain = self.explain.get_concrete_function()
        signatures = {"serving_default": explain, "explain": explain, "predict": self.predict.get_concrete_function()}
        if self._contract is not None:
            signatures["serving_default"] = self.serve.get_concrete_function()
            signatures["explain_input"] = self.explain_input.get_concrete_function()
        return signatures
