"""The exported object: a tf.Module whose `explain` and `predict` are
tf.functions with a free batch dimension, XLA-compiled unless `xla` is off
(plain graph mode measured faster for some small models on CPU)."""

import tensorflow as tf

from .explainer import Explainer


class CamModule(tf.Module):
    def __init__(self, model, explainer: Explainer, input_size, xla: bool = True, name="camserve"):
        super().__init__(name=name)
        # Tracked so the SavedModel carries the weights the functions read.
        self.model = model
        self._explainer = explainer
        images = tf.TensorSpec([None, *input_size, 3], tf.uint8, name="images")
        per_image = [tf.TensorSpec([None], tf.int32, name=n) for n in ("class_index", "method")]
        self.explain = tf.function(self._explain, jit_compile=xla, input_signature=[images, *per_image])
        self.predict = tf.function(self._predict, jit_compile=xla, input_signature=[images])

    # TensorFlow requires the bound method's first parameter to be called `self`.
    def _explain(self, images, class_index, method):
        return self._explainer.explain(images, class_index, method)

    def _predict(self, images):
        return self._explainer.predict(images)

    def signatures(self):
        explain = self.explain.get_concrete_function()
        return {"serving_default": explain, "explain": explain, "predict": self.predict.get_concrete_function()}
