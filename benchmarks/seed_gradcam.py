"""Grad-CAM the way users write it by hand today (the Keras example the seeds
follow): an eager GradientTape per image. The baseline camserve is measured against."""

import keras
import tensorflow as tf

from camserve.export.preprocess import preprocess


def seed_style_gradcam(model, target_name: str, mode: str):
    """What users write by hand (the Keras example): an eager tape per image."""
    grad_model = keras.Model(model.inputs, [model.get_layer(target_name).output, model.output])

    def explain_one(image):
        x = preprocess(image[None], mode, 3)
        with tf.GradientTape() as tape:
            activations, predictions = grad_model(x)
            score = predictions[:, tf.argmax(predictions[0])]
        grads = tape.gradient(score, activations)
        weights = tf.reduce_mean(grads, axis=(0, 1, 2))
        cam = tf.nn.relu(tf.reduce_sum(activations[0] * weights, axis=-1))
        return (cam / (tf.reduce_max(cam) + 1e-12)).numpy()

    return explain_one
