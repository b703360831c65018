"""Export checks itself: the reloaded SavedModel against a float64 reference
computed eagerly (no XLA) on a float64 copy of the model."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from . import attention, heads, repository
from .explainer import COUNTERFACTUAL, FUSIONS, LAYER_CODE, Explainer
from .graph import Head, split
from .graph import head as find_head
from .heads import HeadError
from .methods import ATTENTION, CAM_NAMES, METHODS, NAMES, CamMethod
from .preprocess import preprocess
from .source import COMPATIBILITY

# float32 arithmetic through a deep network: logits relative to their magnitude, each map
# relative to the magnitude of the terms it sums (map_scales), not to the map itself.
TOLERANCE = 1e-4


class VerificationError(RuntimeError):
    pass


def _dtype_config(config, dtype: str):
    """The model's config with every dtype (policy) set to `dtype`."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy":
            return {**config, "config": {**config["config"], "name": dtype}}
        return {k: (dtype if k == "dtype" and isinstance(v, str) else _dtype_config(v, dtype)) for k, v in config.items()}
    if isinstance(config, list):
        return [_dtype_config(v, dtype) for v in config]
    return config


def as_dtype(model: keras.Model, dtype: str) -> keras.Model:
    """A copy of the model computing in `dtype` throughout, with the same weights."""
    config = _dtype_config(keras.saving.serialize_keras_object(model), dtype)
    with keras.saving.custom_object_scope(COMPATIBILITY):
        twin = keras.saving.deserialize_keras_object(config)
    twin.set_weights([np.asarray(w, dtype) for w in model.get_weights()])
    return twin


def mixed_policy(model: keras.Model) -> str | None:
    """The name of the mixed-precision policy some layer computes in (mixed_float16,
    mixed_bfloat16); None when every layer computes in its variables' dtype."""
    for layer in model._flatten_layers(include_self=False):
        policy = layer.dtype_policy
        if policy.compute_dtype != policy.variable_dtype:
            return policy.name
    return None


def offered_methods(attention) -> list[str]:
    """The names of the methods an export offers, in code order: the attention methods
    only with the model's attention (they come last, so an index is still a code)."""
    return list(NAMES if attention is not None else CAM_NAMES)


def sample_inputs(input_size, num_classes: int, layers: int = 1, methods: int = len(METHODS), seed: int = 0):
    """Smooth random images (structured activations, unlike white noise) with
    top-1, runner-up and explicit classes and, one an image, each of the first
    `methods` methods (every third one counterfactual where it has one) and, with
    several layers, every layer and fusion (the attention methods at the default)."""
    count = methods + 3
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(count, 8, 8, 3)).astype(np.float32)
    images = tf.image.resize(coarse, input_size).numpy()
    images = np.clip(images + rng.normal(0, 12, images.shape), 0, 255).astype(np.uint8)
    class_index = np.resize(np.array([-1, 0, num_classes - 1, -2, num_classes // 2, -1], np.int32), count)
    method = np.arange(count) % methods
    signed = np.array([getattr(METHODS[m], "counterfactual", True) for m in method])
    method = method + np.where((np.arange(count) % 3 == 2) & signed, COUNTERFACTUAL, 0)
    if layers > 1:
        cam = np.array([isinstance(METHODS[m % COUNTERFACTUAL], CamMethod) for m in method])
        method = method + LAYER_CODE * np.where(cam, np.arange(count) % (layers + len(FUSIONS)), 0)
    method = method.astype(np.int32)
    return images, class_index, method


@dataclass
class Report:
    logits_error: float  # relative to the largest |logit|
    heatmap_error: float  # the largest of each map's error relative to its terms' scale (map_scales)
    worst_map: str  # which map that was
    contract: ContractReport | None = None  # the model's own input contract, when exported

    @property
    def ok(self) -> bool:
        return self.logits_error <= TOLERANCE and self.heatmap_error <= TOLERANCE and (self.contract is None or self.contract.ok)

    def __str__(self) -> str:
        text = (
            f"logits {self.logits_error:.2e} relative, heatmaps {self.heatmap_error:.2e} of their terms' scale "
            f"(largest: {self.worst_map})"
        )
        return text if self.contract is None else f"{text}; {self.contract}"


@dataclass
class ContractReport:
    """The model contract's signatures on the float inputs preprocessing gives the sample images."""

    output_error: float  # serving_default against the Keras model's own outputs, relative to their largest
    explain: Report  # explain_input against the float64 reference explain is judged by

    @property
    def ok(self) -> bool:
        return self.output_error <= TOLERANCE and self.explain.ok

    def __str__(self) -> str:
        return f"model contract: serving_default {self.output_error:.2e} relative to the model's outputs, explain_input {self.explain}"


def _relative_error(got, want, floor: float = 1e-12) -> float:
    """Largest difference relative to the larger of `floor` and the largest |want|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), floor))


def check_outputs(head: Head, outputs: dict, original):
    """The exported outputs mean what the model's own outputs mean: its probabilities
    when the head was stripped, its scores otherwise (binary: the positive class).
    Relative to at least 1: probabilities are small numbers that are exact anyway."""
    name = "probabilities" if head.stripped else "logits"
    error = _relative_error(heads.model_output(head.kind, head.stripped, outputs), original, floor=1.0)
    if not error <= TOLERANCE:
        raise HeadError(
            f"the exported {name} differ from the model's own outputs by {error:.1e} (relative) with head "
            f"{head.kind!r} read at layer {head.where!r}: that layer does not compute what the head says. "
            "Pass --head softmax|sigmoid|binary|linear to say what it computes"
        )
    if head.kind == "linear" and not head.forced and _looks_like_probabilities(np.asarray(original)):
        raise HeadError(
            f"the model's outputs are probabilities (each row sums to 1), but its last layer {head.where!r} is not "
            "a recognised softmax. Pass --head softmax if that layer applies a softmax to its input, or "
            "--head linear to explain the probabilities as they are"
        )


def _looks_like_probabilities(outputs: np.ndarray) -> bool:
    return (
        outputs.shape[-1] > 1
        and outputs.min() >= 0.0
        and bool(np.allclose(outputs.sum(axis=-1), 1.0, rtol=1e-5, atol=1e-5))
    )


def verify(saved_model_dir, model, target_paths, preprocess_mode, channels, input_size, head=None) -> Report:
    """`head` is the --head override, if any."""
    signatures = tf.saved_model.load(str(saved_model_dir)).signatures
    explain = signatures["explain"]
    num_classes = int(explain.structured_outputs["logits"].shape[-1])
    metadata = repository.read_metadata(saved_model_dir)
    inputs = sample_inputs(input_size, num_classes, len(target_paths), len(metadata["methods"]))
    images, class_index, method = inputs
    got = {k: v.numpy() for k, v in explain(images=images, class_index=class_index, method=method).items()}
    want, scales = reference(model, target_paths, preprocess_mode, channels, inputs, head)
    report = compare(got, want, scales, method, target_paths)
    if contract := metadata.get("input_contract"):
        # The model's own input: what preprocessing gives these images, as a TF Serving client sends it.
        x = tf.cast(preprocess(images, preprocess_mode, channels), contract["dtype"])
        served = signatures[contract["signature"]](**{contract["input"]: x})[contract["output"]]
        by_input = signatures[contract["explain_signature"]](**{contract["input"]: x, "class_index": class_index, "method": method})
        report.contract = ContractReport(
            _relative_error(served, model(x, training=False)),
            compare({k: v.numpy() for k, v in by_input.items()}, want, scales, method, target_paths),
        )
    return report


def check_contract(serve, explain_input, contract, x, class_index, method, original, explained) -> tuple[float, float]:
    """At export, cheaply (no reference): the model contract's `serve` on the model's input
    `x` gives the model's own outputs `original`, and `explain_input` the classes and maps
    `explained`, explain's for the images x was prepared from. Returns both errors."""
    error = _relative_error(serve(x)[contract.output], original)
    by_input = explain_input(x, class_index, method)
    same_classes = np.array_equal(by_input["class_index"], explained["class_index"])
    heatmap_error = float(np.max(np.abs(np.asarray(by_input["heatmap"]) - np.asarray(explained["heatmap"]))))
    if not (error <= TOLERANCE and heatmap_error <= TOLERANCE and same_classes):
        raise VerificationError(
            f"the model's own contract disagrees: serving_default differs from the model's outputs by {error:.1e} (relative), "
            f"explain_input's heatmaps from explain's by {heatmap_error:.1e}{'' if same_classes else ', and it explains other classes'} "
            f"(tolerance {TOLERANCE:.0e}); nothing was published"
        )
    return error, heatmap_error


def reference(model, target_paths, preprocess_mode, channels, inputs, head=None) -> tuple[dict, np.ndarray]:
    """The float64 outputs for `inputs` (images, class_index, method) and, per image, the
    scale its map is judged at (map_scales)."""
    images, class_index, method = inputs
    twin = as_dtype(model, "float64")
    twin_head = find_head(twin, head)
    forwards = [split(twin, path, twin_head) for path in target_paths]
    x = preprocess(images, preprocess_mode, channels, tf.float64)
    found, _ = attention.find(twin, forwards[0], x[:1])
    explainer = Explainer(forwards, preprocess_mode, channels, twin_head.kind, tf.float64, found)
    want = {k: v.numpy() for k, v in explainer.explain(images, class_index, method).items()}
    scales = map_scales(forwards, twin_head.kind, x, want["class_index"], method)
    # An attention map sums non-negative terms (products of probabilities, ReLU'd): nothing
    # cancels, so it is judged against its own peak.
    from_attention = np.isin(method % COUNTERFACTUAL, ATTENTION)
    scales[from_attention] = _raw_map(want)[from_attention].max(axis=(1, 2))
    return want, scales


def compare(got: dict, want: dict, scales, method, target_paths) -> Report:
    """Exported outputs against the reference's for the same inputs."""
    if not np.array_equal(got["class_index"], want["class_index"]):
        # Near-ties in top-1 can flip between float32 and float64; say so rather than compare maps of other classes.
        raise VerificationError(f"explained classes differ: {got['class_index']} vs float64 {want['class_index']}")
    difference = np.max(np.abs(_raw_map(got) - _raw_map(want)), axis=(1, 2))
    # A map whose terms are all zero must be zero.
    errors = np.divide(difference, scales, out=np.where(difference > 0, np.inf, 0.0), where=scales > 0)
    worst = int(np.argmax(errors))
    return Report(
        _relative_error(got["logits"], want["logits"]),
        float(errors[worst]),
        f"{_describe(method[worst], target_paths)} for class {want['class_index'][worst]} of image {worst}, "
        f"{difference[worst]:.2e} where its terms reach {scales[worst]:.2e}",
    )


def map_scales(forwards, head_kind, x, chosen, method) -> np.ndarray:
    """Per image, what its map's float32 rounding is judged against: the largest magnitude
    of the terms its method sums (CamMethod.scale), for the float64 activations and
    gradients of the explained logit at the map's layer. A fusion of layer maps, each
    scaled to a maximum of 1, is judged against the same fusion of each layer's term
    magnitudes over that layer's maximum."""
    layer, code = np.divmod(method, LAYER_CODE)
    sign = np.where(code >= COUNTERFACTUAL, -1.0, 1.0)
    # Attention methods have no terms at a layer (reference() judges them): Grad-CAM's stand in.
    code = np.where(np.isin(code % COUNTERFACTUAL, ATTENTION), 0, code % COUNTERFACTUAL)
    rows = np.arange(len(method))
    scales, maps = [], []
    for forward in forwards:
        with tf.GradientTape() as tape:
            tape.watch(x)  # records the pass even when every weight is frozen
            scores, activations = forward(x)
            logits = heads.logits(head_kind, scores)
            score = tf.reduce_sum(logits * tf.one_hot(chosen, logits.shape[-1], dtype=logits.dtype) * sign[:, None])
        gradients = tape.gradient(score, activations)
        each = [(activations[i : i + 1], gradients[i : i + 1], METHODS[code[i]]) for i in rows]
        scales.append(tf.concat([m.scale(a, g) for a, g, m in each], axis=0))
        maps.append(tf.concat([m.map(a, g) for a, g, m in each], axis=0))
    # At the finest layer's size, where the explainer brings every layer's map.
    finest = max((tuple(s.shape[1:3]) for s in scales), key=lambda hw: hw[0] * hw[1])
    scales, maps = (np.stack([_resized(v, finest) for v in vs], axis=1) for vs in (scales, maps))
    peaks = maps.max(axis=(2, 3), keepdims=True)
    relative = np.divide(scales, peaks, out=np.zeros_like(scales), where=peaks > 0)
    fused = {"mean": relative.mean(axis=1), "max": relative.max(axis=1)}
    choices = np.concatenate([scales, np.stack([fused[name] for name in FUSIONS], axis=1)], axis=1)
    return choices[rows, layer].max(axis=(1, 2))


def _resized(values, size):
    same = tuple(values.shape[1:3]) == size
    return values if same else tf.image.resize(values[..., None], size, "bilinear")[..., 0]


def _describe(code: int, target_paths) -> str:
    """What a method code asks for, in words."""
    layer, code = divmod(int(code), LAYER_CODE)
    words = [NAMES[code % COUNTERFACTUAL]] + (["counterfactual"] if code >= COUNTERFACTUAL else [])
    if len(target_paths) > 1:
        words.append(f"layer {'.'.join(target_paths[layer])}" if layer < len(target_paths) else f"{FUSIONS[layer - len(target_paths)]} of the layers")
    return ", ".join(words)


def _raw_map(outputs):
    return outputs["heatmap"] * outputs["heatmap_scale"][:, None, None]
