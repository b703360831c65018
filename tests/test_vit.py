"""Vision transformers: maps at token layers, on the patch grid (export/tokens.py),
against an independent float64 reference that reads the target's tokens from the
Keras model running eagerly and makes the grid here, from the model's known
geometry: hand-written functional ViTs (32x32 input, patch 8: a 4x4 grid; one
class token or none) and keras-hub's ViT, DeiT and Swin classifiers at
non-square sizes (class; class and distillation; no prefix on a merged grid)."""

import argparse
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from camserve.export import cli, graph
from tests import reference, vit

GRID = vit.SIZE // vit.PATCH
GRADCAM = reference.METHODS.index("gradcam")
# An XLA signature compiles once per batch size, in this process too (4-5 s each): the tests
# run keras-hub ViT's XLA export on reference.check_export's batch size.
BATCH = len(reference.METHODS) + 3


class Exported:
    def __init__(self, tmp, pooling, layer=None, seed=0, verify=True):
        from camserve.export.exporter import ExportOptions, export

        keras.utils.set_random_seed(seed)
        self.model32 = vit.vit(pooling)
        self.model64 = vit.vit(pooling, dtype="float64")
        self.model64.set_weights([np.asarray(w, np.float64) for w in self.model32.get_weights()])
        self.prefix = 1 if pooling == "class" else 0
        self.source = tmp / f"vit_{pooling}.keras"
        self.model32.save(self.source)
        name = f"vit_{pooling}_{layer or 'default'}"
        options = ExportOptions(source=str(self.source), repo=str(tmp / "repo"), name=name, preprocess="scale", layer=layer, xla=False, verify=verify)
        self.path = export(options)
        self.metadata = json.loads((self.path / "assets.extra" / "camserve.json").read_text())
        self.explain = tf.saved_model.load(str(self.path)).signatures["serving_default"]

    def run(self, images, class_index, method):
        out = self.explain(images=images, class_index=np.asarray(class_index, np.int32), method=np.asarray(method, np.int32))
        return {k: v.numpy() for k, v in out.items()}

    def reference(self, images, target):
        """Per image: float64 logits, the target's tokens and d(logit_c)/d(tokens) for every
        class, from the Keras model itself (eager); logits are the head Dense's affine part."""
        head = self.model64.get_layer("head")
        probe = keras.Model(self.model64.inputs, [self.model64.get_layer(target).output, head.input])
        x = tf.constant(images.astype(np.float64) / 255.0)
        with tf.GradientTape(persistent=True) as tape:
            tokens, pooled = probe(x, training=False)
            logits = pooled @ head.kernel + head.bias
            per_class = [tf.reduce_sum(logits[:, c]) for c in range(vit.CLASSES)]
        gradients = np.stack([tape.gradient(s, tokens).numpy() for s in per_class], axis=1)  # [N, C, T, D]
        return logits.numpy(), tokens.numpy(), gradients

    classes, size, grid_shape = vit.CLASSES, vit.SIZE, (GRID, GRID)

    def probabilities(self, images):
        return self.model32(images / 255.0).numpy()

    def grid(self, tokens):
        """[..., T, D] -> [..., gh, gw, D] after the prefix tokens."""
        return tokens[..., self.prefix :, :].reshape(*tokens.shape[:-2], *self.grid_shape, tokens.shape[-1])


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("vit")


@pytest.fixture(scope="module")
def class_token(tmp):
    return Exported(tmp, "class")


@pytest.fixture(scope="module")
def mean_pooled(tmp):
    return Exported(tmp, "mean")


def images(count, seed, size=vit.SIZE):
    return reference.smooth_images(count, size, seed)


def test_class_token_default_is_the_last_blocks_input_on_the_patch_grid(class_token):
    assert class_token.metadata["target_layer"] == "block0_out"  # block1_norm1's input
    assert class_token.metadata["feature_size"] == [GRID, GRID]


def test_class_token_maps_equal_the_float64_reference(class_token):
    reference.check_export(class_token, "block0_out")


def test_gradcam_at_the_final_token_output_of_a_class_token_model_is_exactly_zero(class_token, tmp):
    """After the final per-token LayerNorm the head reads only the class token: the patch
    tokens get exactly zero gradient there, and an export at that layer empty maps;
    the default target's maps are not empty."""
    batch = images(BATCH, seed=6)
    _, _, gradients = class_token.reference(batch, "final_norm")
    assert not np.any(gradients[:, :, 1:]) and np.any(gradients[:, :, 0])
    # Only its zeros matter: no float64 verification (the class-token and mean-pooled exports of
    # this ViT verify theirs; test_verify covers verification).
    at_final = Exported(tmp, "class", layer="final_norm", verify=False)
    assert at_final.metadata["feature_size"] == [GRID, GRID]
    classes, methods = np.resize([-1, 0, 3, -2], BATCH), [GRADCAM] * BATCH
    assert not np.any(at_final.run(batch, classes, methods)["heatmap_scale"])
    assert np.all(class_token.run(batch, classes, methods)["heatmap_scale"] > 0)


def test_mean_pooled_default_is_the_final_token_output(mean_pooled):
    assert mean_pooled.metadata["target_layer"] == "final_norm"
    assert mean_pooled.metadata["feature_size"] == [GRID, GRID]
    reference.check_export(mean_pooled, "final_norm")


ATTENTION = ("attention-rollout", "generic-attention")


def test_attention_methods_equal_the_papers_formulas(class_token):
    """Attention rollout and gradient-weighted attention against a float64 reference that
    computes the ViT by hand from its weights and follows the papers' equations, for
    several classes in one batch; rollout is the same for every class."""
    methods = class_token.metadata["methods"]
    assert class_token.metadata["attention_methods"] == list(ATTENTION)
    count = BATCH
    batch = images(count, seed=8)
    class_index = np.resize([-1, 0, vit.CLASSES - 1, -2, 2], count)
    method = np.array([methods.index(ATTENTION[i % 2]) for i in range(count)])
    got = class_token.run(batch, class_index, method)
    logits, probabilities, gradients = reference.vit_attention(class_token.model64, batch, depth=2, patch=vit.PATCH)
    np.testing.assert_allclose(got["logits"], logits, rtol=1e-4, atol=1e-5)
    rollouts = []
    for i in range(count):
        ranked = np.argsort(-logits[i], kind="stable")
        chosen = ranked[-class_index[i] - 1] if class_index[i] < 0 else class_index[i]
        assert got["class_index"][i] == chosen
        if i % 2 == 0:
            want = reference.attention_rollout(probabilities[i], 1, (GRID, GRID))
            rollouts.append(want)
        else:
            want = reference.generic_attention(probabilities[i], gradients[i, chosen], 1, (GRID, GRID))
        raw = got["heatmap"][i] * got["heatmap_scale"][i]
        assert want.max() > 0 and want.std() > 1e-3 * want.max(), "a flat map proves little"
        np.testing.assert_allclose(raw, want, rtol=0, atol=1e-5 * want.max(), err_msg=f"image {i}, {ATTENTION[i % 2]}")


def test_attention_rollout_has_no_counterfactual_and_no_layer(class_token):
    """Rollout uses no gradient: its counterfactual is refused, as is an attention method at
    another layer, by the signature itself (class -1, an empty map)."""
    from camserve.export.explainer import COUNTERFACTUAL

    methods = class_token.metadata["methods"]
    assert class_token.metadata["class_free_methods"] == ["attention-rollout"]
    rollout, generic = (methods.index(name) for name in ATTENTION)
    got = class_token.run(images(2, seed=9), [-1, -1], [rollout + COUNTERFACTUAL, generic + COUNTERFACTUAL])
    assert got["class_index"][0] == -1 and not got["heatmap"][0].any()
    assert got["class_index"][1] >= 0 and got["heatmap"][1].any()


def test_the_server_answers_attention_methods_and_refuses_what_they_do_not_mean(class_token, mean_pooled, tmp):
    """Over the wire: the attention maps are the signature's own; a rollout counterfactual
    and an attention method on a model without a class token are refused with
    INVALID_ARGUMENT and a message saying why."""
    import grpc

    from camserve.client import Client
    from camserve.server.ops.process import serving

    import shutil

    # Only these two, one image a batch: the warm-up compiles every model's every batch size.
    repo = tmp / "attention_repo"
    for exported in (class_token, mean_pooled):
        shutil.copytree(exported.path, repo / exported.path.parent.name / "1", dirs_exist_ok=True)
    # The mean-pooled model only refuses (by its metadata, before any batch): it never runs, so
    # its warm-up compile (half the server's start) is skipped.
    (repo / mean_pooled.path.parent.name / "config.json").write_text('{"warm_up": false}')
    name = class_token.path.parent.name
    image = images(1, seed=10)[0]
    flags = ("--max-batch-size", "1", "--shutdown-delay", "0")
    with serving(repo, tmp / "attention_server.log", *flags) as process, Client(process.target, model=name) as client:
        assert list(client.get_model(name).methods[-2:]) == list(ATTENTION)
        codes = [class_token.metadata["methods"].index(method) for method in ATTENTION]
        wants = class_token.run(np.stack([image] * len(ATTENTION)), [1] * len(ATTENTION), codes)["heatmap"]
        for method, want in zip(ATTENTION, wants):
            got = client.explain(image, method=method, class_index=1, heatmap_type="float32")
            np.testing.assert_allclose(got.heatmap, want, atol=1e-6)
        for options, message in (
            ({"method": "attention-rollout", "counterfactual": True}, "uses no gradient, so it has no counterfactual map"),
            ({"method": "generic-attention", "model": mean_pooled.path.parent.name}, "does not offer 'generic-attention': the model has no class token"),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                client.explain(image, **options)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in raised.value.details()


def test_models_without_a_class_token_attention_offer_no_attention_methods(mean_pooled):
    assert "attention-rollout" not in mean_pooled.metadata["methods"]
    assert mean_pooled.metadata["attention_methods"] == []
    assert mean_pooled.metadata["unavailable_methods"]["attention-rollout"] == "the model has no class token (its head pools every token)"


def test_list_layers_shows_token_layers_with_their_grid(class_token, capsys):
    args = argparse.Namespace(source=str(class_token.source), weights="none", input_size=None, custom_objects=None)
    assert cli.list_layers(args) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "17 tokens x 16: 1 prefix + 4 x 4 patch grid of patch_embed  <- default" in lines["block0_out"]
    assert "(branch)" in lines["block1_attn"]
    assert "4 x 4 x 16" in lines["patch_embed"]


def test_tokens_without_a_patch_grid_are_refused():
    """Tokens cut from the image by a reshape have no patch map the grid could be read from."""
    inputs = keras.Input((vit.SIZE, vit.SIZE, 3))
    tokens = keras.layers.Dense(8, name="tokens")(keras.layers.Reshape((64, 48), name="cut")(inputs))
    out = keras.layers.Dense(vit.CLASSES, activation="softmax")(keras.layers.GlobalAveragePooling1D()(tokens))
    model = keras.Model(inputs, out)
    for spec in ("tokens", None):
        with pytest.raises(graph.TargetLayerError, match="not their patch grid"):
            graph.resolve_target(model, spec)


# keras-hub's classifiers, tiny and non-square. Built twice: in float32 for the export,
# in float64 (same weights) for the reference, which runs their layers one by one.
HUB = {
    # name: (backbone constructor, its arguments, classifier, image size, patch grid, prefix tokens)
    "vit": ("ViTBackbone", {"patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}, "ViTImageClassifier", (32, 48), (4, 6), 1),
    "deit": ("DeiTBackbone", {"patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 16, "intermediate_dim": 32}, "DeiTImageClassifier", (32, 48), (4, 6), 2),
    # Patch 4 makes 16 x 24 tokens; stage 0 (a window block and a shifted-window one) merges them
    # 2 x 2 for stage 1, whose one block is enough to explain on the merged grid.
    "swin": ("SwinTransformerBackbone", {"embed_dim": 8, "depths": [2, 1], "num_heads": [2, 2], "window_size": 4, "patch_size": 4}, "SwinTransformerImageClassifier", (64, 96), (8, 12), 0),
    # No classifier ships for DINOv2: a user's softmax head on its class token; 4 register tokens.
    "dinov2": ("DINOV2Backbone", {"patch_size": 7, "num_layers": 2, "hidden_dim": 16, "num_heads": 2, "intermediate_dim": 32,
                                  "num_register_tokens": 4, "position_embedding_shape": (28, 28, 3)}, None, (28, 28), (4, 4), 5),
}


class HubExported(Exported):
    """A keras-hub classifier whose preprocessor scales to [-1, 1] (ViT's presets) or
    normalises by ImageNet's mean and std (DeiT's and Swin's)."""

    classes = 3

    def __init__(self, tmp, kind, seed=0):
        from camserve.export.exporter import ExportOptions, export

        hub = pytest.importorskip("keras_hub", reason="keras-hub is not installed: pip install -e '.[test]'")
        backbone, arguments, classifier, self.size, self.grid_shape, self.prefix = HUB[kind]
        self.kind, self.torch = kind, kind != "vit"
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        scale, offset = ((1 / (255 * std)).tolist(), (-mean / std).tolist()) if self.torch else (1 / 127.5, -1.0)
        converter = hub.layers.ImageConverter(image_size=self.size, scale=scale, offset=offset)

        def build(dtype):
            body = getattr(hub.models, backbone)(image_shape=(*self.size, 3), dtype=dtype, **arguments)
            if classifier is None:
                inputs = keras.Input((*self.size, 3), dtype=dtype)
                head = keras.layers.Dense(self.classes, activation="softmax", name="predictions", dtype=dtype)
                return keras.Model(inputs, head(body(inputs)[:, 0]))
            preprocessor = hub.models.ImageClassifierPreprocessor(image_converter=converter)
            return getattr(hub.models, classifier)(backbone=body, num_classes=self.classes, preprocessor=preprocessor, head_dtype=dtype)

        keras.utils.set_random_seed(seed)
        self.model32, self.model64 = build("float32"), build("float64")
        self.model64.set_weights([np.asarray(w, np.float64) for w in self.model32.get_weights()])
        self.source = tmp / f"hub_{kind}.keras"
        self.model32.save(self.source)
        mode = "torch" if classifier is None else None  # a user's model says nothing: the caller does
        # XLA for ViT: the token grid and the attention methods under XLA (the hand-written ViTs and the
        # other families run plain graphs: an XLA compile is most of their export, Swin's 42 s).
        self.path = export(ExportOptions(source=str(self.source), repo=str(tmp / "repo"), name=f"hub_{kind}", preprocess=mode, xla=kind == "vit"))
        self.metadata = json.loads((self.path / "assets.extra" / "camserve.json").read_text())
        self.explain = tf.saved_model.load(str(self.path)).signatures["serving_default"]

    def probabilities(self, images):
        """The classifier's own predict, which applies its preprocessor; its head is linear.
        The user's model of DINOv2 takes normalised pixels and ends in a softmax."""
        if self.kind == "dinov2":
            return self.model32(self._pixels(images).astype(np.float32)).numpy()
        return tf.nn.softmax(self.model32.predict(images.astype(np.float32), verbose=0)).numpy()

    def _pixels(self, images):
        mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
        x = images.astype(np.float64)
        return (x / 255 - mean) / std if self.torch else x / 127.5 - 1

    def reference(self, images, target):
        """As Exported.reference, running the float64 layers by hand: the pixels prepared here
        from the preprocessor's known scale and offset, the encoder's blocks one by one for
        the last block's input (ViT, DeiT), the backbone's output for Swin."""
        model, x = self.model64, tf.constant(self._pixels(images))
        backbone, dense = model.layers[1], model.get_layer("predictions")
        if self.kind == "swin":
            tokens = backbone(x, training=False)
        else:
            embed, encoder = backbone.layers[1], backbone.layers[2]
            held = encoder.layers if self.kind == "dinov2" else encoder.encoder_layers
            tokens = self._block(held[0], embed(x))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(tokens)
            if self.kind == "swin":
                pooled = tf.reduce_mean(tokens, axis=1)
            else:  # the final LayerNorm: the encoder's own, or DINOv2's after it
                norm = backbone.layers[3] if self.kind == "dinov2" else encoder.layer_norm
                pooled = norm(self._block(held[1], tokens))[:, 0]
            logits = pooled @ dense.kernel + dense.bias
            per_class = [tf.reduce_sum(logits[:, c]) for c in range(self.classes)]
        gradients = np.stack([tape.gradient(s, tokens).numpy() for s in per_class], axis=1)
        return logits.numpy(), tokens.numpy(), gradients

    @staticmethod
    def _block(block, tokens):
        out = block(tokens, training=False)
        return out[0] if isinstance(out, tuple) else out  # DeiT's blocks also return their scores


@pytest.fixture(scope="module", params=sorted(HUB))
def hub_model(request, tmp):
    return HubExported(tmp, request.param)


def test_keras_hub_classifiers_export_their_default_on_the_patch_grid(hub_model):
    """ViT and DeiT read only the class token: the default is the last block's input, a
    block inside the encoder layer; Swin pools every token: its final output."""
    expected = {"vit": "vi_t_backbone.vit_encoder.transformer_block_1", "deit": "dei_t_backbone.deit_encoder.transformer_block_1",
                "swin": "swin_transformer_backbone.norm", "dinov2": "dinov2_backbone.dinov2_backbone_encoder.layers_0"}
    assert hub_model.metadata["target_layer"] == expected[hub_model.kind]
    assert hub_model.metadata["feature_size"] == list(hub_model.grid_shape)
    # The preprocessor is compiled into the signature as the mode it equals.
    assert hub_model.metadata["preprocess"] == ("torch" if hub_model.torch else "tf")


def test_keras_hub_maps_equal_the_float64_reference(hub_model):
    reference.check_export(hub_model, hub_model.metadata["target_layer"])


def test_keras_hub_class_token_transformers_offer_the_attention_methods(hub_model):
    """ViT, DeiT and DINOv2 (registers) attend globally with keras MultiHeadAttention; Swin
    attends within windows of its own: it offers the CAM methods only. The export verified
    the attention maps against float64; here they are non-empty and differ by class."""
    methods = hub_model.metadata["methods"]
    if hub_model.kind == "swin":
        assert not any(name in methods for name in ATTENTION)
        return
    count = BATCH  # ViT's XLA signature compiled it for check_export
    method = [methods.index(ATTENTION[i // 3 % 2]) for i in range(count)]
    one_image = np.repeat(reference.smooth_images(1, hub_model.size, seed=3), count, axis=0)
    got = hub_model.run(one_image, np.resize([0, 1, 2], count), method)
    assert got["heatmap"].shape[1:] == hub_model.grid_shape and np.all(got["heatmap_scale"] > 0)
    np.testing.assert_allclose(got["heatmap"][0], got["heatmap"][1], atol=1e-6)  # rollout: no class
    assert np.abs(got["heatmap"][3] - got["heatmap"][4]).max() > 1e-3  # generic attention: by class


def test_a_preprocess_other_than_the_keras_hub_preprocessors_is_refused(hub_model):
    """The served probabilities must be the classifier's own predict's; a model with no
    preprocessor (the user's DINOv2 one) takes the caller's word."""
    from camserve.export import source
    from camserve.export.exporter import ExportError, ExportOptions, _preprocess_mode

    asked = ExportOptions(source=str(hub_model.source), repo="unused", name="unused", preprocess="scale")
    loaded = source.load(str(hub_model.source))
    if hub_model.kind == "dinov2":
        assert _preprocess_mode(asked, loaded) == "scale"
        return
    with pytest.raises(ExportError, match="differs from what its keras-hub preprocessor does"):
        _preprocess_mode(asked, loaded)


def test_eigencam_on_layernormed_tokens_takes_the_reference_sign():
    """After a LayerNorm with no bias every token's channel sum is zero but for rounding,
    which decided Eigen-CAM's sign, so float32 and float64 disagreed about half the time."""
    from camserve.export.methods.eigencam import principal_projection

    rng = np.random.default_rng(0)
    agree = 0
    for _ in range(20):
        x = rng.normal(size=(4, 6, 16)) @ rng.normal(size=(16, 16))  # correlated channels: a clear principal direction
        a = (x - x.mean(axis=-1, keepdims=True)) / x.std(axis=-1, keepdims=True)
        got = principal_projection(tf.constant(a[None], tf.float32), tf.constant(a[None], tf.float32)).numpy()[0]
        expected = reference.principal_projection(a, a)
        agree += np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    assert agree == 20
