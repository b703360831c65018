"""keras-hub's convolutional and hybrid classifiers, tiny and at non-square sizes where
they allow it, exported with their defaults: maps equal an independent reference that
records the target's output while the Keras model itself runs eagerly
(reference.capture), for every method and several classes in one batch; the
probabilities are the model's own. Their heads are linear: the output is the logits."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import reference

hub = pytest.importorskip("keras_hub", reason="keras-hub is not installed: pip install -e '.[test]'")

CLASSES = 3
FAMILIES = {
    # name: (classifier, backbone, its arguments, image size)
    "resnet": ("ResNetImageClassifier", "ResNetBackbone", {"input_conv_filters": [64], "input_conv_kernel_sizes": [3], "stackwise_num_filters": [64, 16],
                                                           "stackwise_num_blocks": [1, 1], "stackwise_num_strides": [1, 2], "block_type": "basic_block"}, (48, 64)),
    "densenet": ("DenseNetImageClassifier", "DenseNetBackbone", {"stackwise_num_repeats": [1, 1], "growth_rate": 4}, (48, 64)),
    "xception": ("XceptionImageClassifier", "XceptionBackbone", {"stackwise_conv_filters": [[8, 8], [16, 16], [16]], "stackwise_pooling": [True, True, False]}, (72, 96)),
    # SegFormer's encoder: tokens reshaped to maps inside the backbone, square only.
    "mit": ("MiTImageClassifier", "MiTBackbone", {"layerwise_depths": [1, 1], "num_layers": 2, "layerwise_num_heads": [1, 2], "layerwise_sr_ratios": [2, 1],
                                                  "max_drop_path_rate": 0.0, "layerwise_patch_sizes": [7, 3], "layerwise_strides": [4, 2], "hidden_dims": [8, 16]}, (64, 64)),
}


class Zoo:
    classes = CLASSES

    def __init__(self, tmp, family):
        from camserve.export.exporter import ExportOptions, export

        classifier, backbone, arguments, self.size = FAMILIES[family]
        keras.utils.set_random_seed(0)
        body = getattr(hub.models, backbone)(image_shape=(*self.size, 3), **arguments)
        self.model = getattr(hub.models, classifier)(backbone=body, num_classes=CLASSES)
        source = tmp / f"{family}.keras"
        self.model.save(source)
        # The plain graph: XLA is exercised by the other suites, and its compile is most of an export here.
        self.path = export(ExportOptions(source=str(source), repo=str(tmp / "repo"), name=family, preprocess="scale", xla=False))
        self.metadata = json.loads((self.path / "assets.extra" / "camserve.json").read_text())
        self.grid_shape = tuple(self.metadata["feature_size"])
        self.explain = tf.saved_model.load(str(self.path)).signatures["serving_default"]

    def run(self, images, class_index, method):
        out = self.explain(images=images, class_index=np.asarray(class_index, np.int32), method=np.asarray(method, np.int32))
        return {k: v.numpy() for k, v in out.items()}

    def probabilities(self, images):
        return tf.nn.softmax(self.model.predict(images.astype(np.float32) / 255.0, verbose=0)).numpy()

    def reference(self, images, target):
        return reference.capture(self.model, target.split("."), tf.constant(images.astype(np.float32) / 255.0), CLASSES)

    @staticmethod
    def grid(activations):
        return activations.astype(np.float64)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def zoo(request, tmp_path_factory):
    return Zoo(tmp_path_factory.mktemp("zoo"), request.param)


def test_keras_hub_family_maps_equal_the_eager_model_s_own(zoo):
    assert len(zoo.grid_shape) == 2 and min(zoo.grid_shape) > 1
    # Images on which the random models' maps are rarely empty (gradcam++ and layercam
    # ReLU the gradients, which MiT's LayerNorm'd maps make all negative more often).
    reference.check_export(zoo, zoo.metadata["target_layer"], seed=7)
