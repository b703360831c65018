"""keras-hub's convolutional and hybrid classifiers, tiny and at non-square sizes where
they allow it, exported with their defaults: maps equal an independent reference that
records the target's output while the Keras model itself runs eagerly
(reference.capture), for every method and several classes in one batch; the
probabilities are the model's own. Their heads are linear: the output is the logits.

One keras.applications constructor a family, the same way (random weights, no softmax,
at about the smallest input each takes), runs only with CAMSERVE_APPLICATIONS=1
(`make zoo`): their widths are fixed, so an export takes 5-20 s each even in the plain
graph, more than the suite's budget allows for all of them."""

import json
import os

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
    "efficientnet": ("EfficientNetImageClassifier", "EfficientNetBackbone", {
        "stackwise_kernel_sizes": [3, 3], "stackwise_num_repeats": [1, 1], "stackwise_input_filters": [8, 320], "stackwise_output_filters": [8, 640],
        "stackwise_expansion_ratios": [1, 2], "stackwise_squeeze_and_excite_ratios": [0.0, 0.25], "stackwise_strides": [2, 2],
        "stackwise_block_types": ["fused", "unfused"], "stackwise_force_input_filters": [0, 0], "stackwise_nores_option": [False, False],
        # Per-stack widths are saved with the model (its num_features is not): 8, 8, 16, then 32 channels.
        "stackwise_width_coefficients": [1.0, 0.025], "stackwise_depth_coefficients": [1.0, 1.0]}, (24, 40)),
    "mobilenet": ("MobileNetImageClassifier", "MobileNetBackbone", {
        "stackwise_expansion": [[16, 24]], "stackwise_num_blocks": [2], "stackwise_num_filters": [[8, 16]], "stackwise_kernel_size": [[3, 3]],
        "stackwise_num_strides": [[2, 2]], "stackwise_se_ratio": [[None, 0.25]], "stackwise_activation": [["relu", "hard_swish"]],
        "stackwise_padding": [[1, 1]], "output_num_filters": 32, "depthwise_filters": 8, "depthwise_stride": 1, "depthwise_residual": False,
        "last_layer_filter": 32, "squeeze_and_excite": None, "input_activation": "hard_swish", "output_activation": "hard_swish",
        "input_num_filters": 8}, (24, 40)),
    "cspnet": ("CSPNetImageClassifier", "CSPNetBackbone", {
        "stem_filters": 8, "stem_kernel_size": 3, "stem_strides": 2, "stem_padding": "valid", "stackwise_depth": [1, 1], "stackwise_strides": 2,
        "stackwise_num_filters": [16, 32], "down_growth": True, "bottle_ratio": (0.5, 1.0), "block_ratio": (1.0, 0.5), "expand_ratio": (2.0, 1.0),
        "block_type": "dark_block", "stage_type": "csp"}, (24, 40)),
    # SegFormer's encoder: tokens reshaped to maps inside the backbone, square only.
    "mit": ("MiTImageClassifier", "MiTBackbone", {"layerwise_depths": [1, 1], "num_layers": 2, "layerwise_num_heads": [1, 2], "layerwise_sr_ratios": [2, 1],
                                                  "max_drop_path_rate": 0.0, "layerwise_patch_sizes": [7, 3], "layerwise_strides": [4, 2], "hidden_dims": [8, 16]}, (64, 64)),
}


# name: image size, non-square where the family allows, small but with a last block of at
# least 2x2 (a stride-32 network at 64x96: 2x3). InceptionResNetV2's last block is 1x1 at
# 75x75: its default moves back along the main path.
APPLICATIONS = {
    "VGG16": (32, 48), "ResNet50": (64, 96), "ResNet50V2": (64, 96), "InceptionV3": (75, 96), "InceptionResNetV2": (75, 75),
    "Xception": (71, 96), "MobileNet": (64, 96), "MobileNetV2": (64, 96), "MobileNetV3Small": (64, 96), "DenseNet121": (64, 96),
    "NASNetMobile": (32, 32), "EfficientNetB0": (64, 96), "EfficientNetV2B0": (64, 96), "ConvNeXtTiny": (64, 96),
}
APPLICATIONS_ON = os.environ.get("CAMSERVE_APPLICATIONS") == "1"


def _build(family, size):
    if family in APPLICATIONS:
        constructor = getattr(keras.applications, family)
        return constructor(weights=None, input_shape=(*size, 3), classes=CLASSES, classifier_activation=None)
    classifier, backbone, arguments, _ = FAMILIES[family]
    # EfficientNet's backbone takes input_shape (an image_shape it would ignore).
    shape = "input_shape" if backbone == "EfficientNetBackbone" else "image_shape"
    body = getattr(hub.models, backbone)(**{shape: (*size, 3)}, **arguments)
    return getattr(hub.models, classifier)(backbone=body, num_classes=CLASSES)


class Zoo:
    classes = CLASSES

    def __init__(self, tmp, family):
        from camserve.export.exporter import ExportOptions, export

        self.size = APPLICATIONS[family] if family in APPLICATIONS else FAMILIES[family][3]
        keras.utils.set_random_seed(0)
        self.model = _build(family, self.size)
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


APPLICATIONS_SKIP = pytest.mark.skipif(
    not APPLICATIONS_ON, reason="keras.applications families take minutes together: CAMSERVE_APPLICATIONS=1 (make zoo) runs them"
)


@pytest.fixture(scope="module", params=[*sorted(FAMILIES), *(pytest.param(name, marks=APPLICATIONS_SKIP) for name in APPLICATIONS)])
def zoo(request, tmp_path_factory):
    return Zoo(tmp_path_factory.mktemp("zoo"), request.param)


def test_keras_hub_family_maps_equal_the_eager_model_s_own(zoo):
    assert len(zoo.grid_shape) == 2 and min(zoo.grid_shape) > 1
    # Images on which the random models' maps are rarely empty (gradcam++ and layercam
    # ReLU the gradients, which MiT's LayerNorm'd maps make all negative more often).
    reference.check_export(zoo, zoo.metadata["target_layer"], seed=7)
