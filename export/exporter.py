"""`camserve export`: Keras model -> verified, versioned SavedModel."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from camserve.progress import Steps

from . import attention, graph, repository, source
from .choices import INPUT_CONTRACTS
from .explainer import COUNTERFACTUAL, FUSIONS, LAYER_CODE, Explainer
from .methods import METHODS, NAMES, AttentionMethod
from .module import EXPLAIN_OUTPUTS, CamModule, InputContract
from .preprocess import MODES, preprocess
from .verify import (
    TOLERANCE,
    VerificationError,
    as_dtype,
    check_contract,
    check_outputs,
    mixed_policy,
    offered_methods,
    sample_inputs,
    verify,
)


class ExportError(ValueError):
    pass


@dataclass
class ExportOptions:
    source: str
    repo: str
    name: str
    version: int | None = None
    layer: str | list[str] | None = None  # several: the first is the default, the others on request
    preprocess: str | None = None
    labels: str | None = None
    weights: str = "imagenet"
    input_size: tuple[int, int] | None = None
    verify: bool = True
    head: str | None = None  # None: recognised from the last layer
    custom_objects: str | None = None  # a module (or .py file) imported before loading
    xla: bool = True  # False: plain graph mode
    # "model": also the model's own input (preprocessed floats) as serving_default and explain_input.
    input_contract: str = "images"


def _input_geometry(model, requested):
    """(H, W) and channel count of the model's image input."""
    shape = tuple(model.inputs[0].shape) if len(model.inputs) == 1 else ()
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ExportError(f"expected one image input [N,H,W,3] (or 1 channel), got {list(shape) or 'several inputs'}")
    fixed = shape[1:3]
    if None in fixed:
        if requested is None:
            raise ExportError(f"the model's input size is open {list(shape)}: give it with --input-size HxW")
        return tuple(requested), shape[-1]
    if requested is not None and tuple(requested) != fixed:
        raise ExportError(f"--input-size {requested[0]}x{requested[1]} differs from the model's fixed {fixed[0]}x{fixed[1]}")
    return fixed, shape[-1]


def _classes(opts: ExportOptions, src: source.Source, num_classes: int):
    classes = source.read_labels(opts.labels) if opts.labels else src.classes
    if classes is not None and len(classes) != num_classes:
        raise ExportError(f"{len(classes)} labels for a model with {num_classes} classes")
    return classes


def _targets(model, layers) -> tuple[list[tuple[str, ...]], str | None]:
    """The target layers' paths, the default first, each named once; and, when the default
    is used, the note on why it was chosen (graph.default)."""
    if layers is None:
        path, note = graph.default(model)
        return [path], note
    specs = [layers] if isinstance(layers, str) else list(layers)
    targets = [graph.resolve_target(model, spec) for spec in specs]
    if len(set(targets)) < len(targets):
        raise ExportError(f"a --layer is given twice: {', '.join('.'.join(t) for t in targets)}")
    return targets, None


def _preprocess_mode(opts: ExportOptions, src: source.Source) -> str:
    if opts.preprocess and src.preprocess_from and opts.preprocess != src.preprocess:
        raise ExportError(
            f"--preprocess {opts.preprocess} differs from what {src.preprocess_from} does ({src.preprocess}): "
            "the served probabilities would differ from the model's own predict; leave --preprocess out"
        )
    mode = opts.preprocess or src.preprocess
    if mode is None:
        raise ExportError(f"say how pixels are prepared for this model: --preprocess {{{','.join(MODES)}}}")
    if mode not in MODES:
        raise ExportError(f"--preprocess {mode!r} is not one of {', '.join(MODES)}")
    return mode


def _input_contract(src: source.Source, head: graph.Head, input_size, channels) -> InputContract:
    """The model's own input and output as its serving signature names them: a Keras 2
    SavedModel's own serving_default; otherwise what model.export() gives (the input
    tensor's name and `output_0`)."""
    model_in = src.model.inputs[0]
    dtype = tf.as_dtype(keras.backend.standardize_dtype(model_in.dtype))
    if not dtype.is_floating:
        raise ExportError(f"--input-contract model takes the model's float input; this model's input is {dtype.name}")
    if src.saved_model is not None:
        alias, output = source.serving_aliases(src.saved_model)
    else:
        # keras names the signature's input after the input tensor, its one output tensor output_0.
        alias, output = model_in.name, "output_0"
    if alias in ("class_index", "method"):
        raise ExportError(f"--input-contract model: the model's input is called {alias!r}, which explain_input takes for its own")
    read = "probabilities" if head.stripped else "logits"
    if output in EXPLAIN_OUTPUTS and (output != read or head.kind == "binary"):
        raise ExportError(f"--input-contract model: the model's output is called {output!r}, which explain_input answers with something else")
    return InputContract(alias, output, dtype, (*input_size, channels), head.kind, head.stripped)


def _publishable_version(opts: ExportOptions) -> int:
    version = opts.version or repository.next_version(opts.repo, opts.name)
    if version < 1:
        raise ExportError("--version must be a positive integer")
    if repository.version_dir(opts.repo, opts.name, version).exists():
        raise ExportError(f"{opts.name} version {version} already exists in {opts.repo}; versions are immutable")
    return version


def export(opts: ExportOptions, steps: Steps | None = None) -> Path:
    """Build, trace, compile, save, verify and publish; returns the version folder."""
    steps = steps or Steps(6)
    if opts.input_contract not in INPUT_CONTRACTS:
        raise ExportError(f"--input-contract {opts.input_contract!r} is not one of {', '.join(INPUT_CONTRACTS)}")
    version = _publishable_version(opts)
    with steps.step(f"build {opts.source}"):
        src = source.load(opts.source, opts.weights, opts.input_size, opts.custom_objects)
        if policy := mixed_policy(src.model):
            # float16 maps differ from float32 ones by about 1e-3: what is verified is what is served.
            src.model = as_dtype(src.model, "float32")
            steps.say(f"      a {policy} model: exported computing in float32 (its variables already are), verified against float64")
        mode = _preprocess_mode(opts, src)
        input_size, channels = _input_geometry(src.model, opts.input_size)
        targets, note = _targets(src.model, opts.layer)
        head = graph.head(src.model, opts.head)
        forwards = [graph.split(src.model, t, head) for t in targets]
        found, attention_note = attention.find(src.model, forwards[0], tf.zeros([1, *input_size, channels]))
        explainer = Explainer(forwards, mode, channels, head.kind, attention=found)
        contract = _input_contract(src, head, input_size, channels) if opts.input_contract == "model" else None
        module = CamModule(src.model, explainer, input_size, opts.xla, contract)
        names = ", ".join(".".join(t) for t in targets)
        steps.say(f"      target layer{'s' if len(targets) > 1 else ''} {names}, input {input_size[0]}x{input_size[1]}, preprocess {mode}")
        if note:
            steps.say(f"      {note}")
        if attention_note:
            steps.say(f"      {attention_note}" if found else f"      attention methods not exported: {attention_note}")
        methods = offered_methods(found)
        read = "the scores before" if head.stripped else "the output of"
        steps.say(f"      head {head.kind}{' (--head)' if head.forced else ''}: logits are {read} {head.where}")
        if contract:
            h, w, c = contract.shape
            steps.say(
                f"      model contract: serving_default takes {contract.input!r} {contract.dtype.name} [N,{h},{w},{c}] and "
                f"answers {contract.output!r}; explain_input explains that input; explain and predict take uint8 images"
            )

    with steps.step("trace signatures"):
        signatures = module.signatures()
        outputs = signatures["explain"].structured_outputs
        num_classes = int(outputs["logits"].shape[-1])
        feature_size = [int(d) for d in outputs["heatmap"].shape[1:]]
        classes = _classes(opts, src, num_classes)
        steps.say(f"      {num_classes} classes, feature map {feature_size[0]}x{feature_size[1]}")

    with steps.step(f"compile{' with XLA' if opts.xla else ''}, compare with the model's own outputs"):
        images, class_index, method = sample_inputs(input_size, num_classes, len(targets), len(methods))
        outputs = module.explain(images, class_index, method)
        layer_sizes = explainer.layer_sizes(images)
        module.predict(images)
        x = preprocess(images, mode, channels)
        original = src.model(x, training=False)
        check_outputs(head, outputs, original)
        if contract:
            x = tf.cast(x, contract.dtype)
            errors = check_contract(module.serve, module.explain_input, contract, x, class_index, method, original, outputs)
            steps.say(f"      model contract: outputs {errors[0]:.1e} from the model's, explain_input's heatmaps {errors[1]:.1e} from explain's")

    staging = repository.staging_dir(opts.repo, opts.name, version)
    shutil.rmtree(staging, ignore_errors=True)
    with steps.step(f"save to {staging}"):
        tf.saved_model.save(module.root, str(staging), signatures=signatures)
        metadata = {
            "name": opts.name,
            "version": version,
            "input_size": list(input_size),
            "input_channels": channels,
            "preprocess": mode,
            "head": head.kind,
            "xla": opts.xla,
            "target_layer": ".".join(targets[0]),
            "layers": [{"name": ".".join(t), "feature_size": list(hw)} for t, hw in zip(targets, layer_sizes)],
            "feature_size": feature_size,
            "num_classes": num_classes,
            "methods": methods,
            # Attention methods explain the model, not a layer; a class-free one has no counterfactual.
            "attention_methods": [m.name for m in METHODS if isinstance(m, AttentionMethod) and m.name in methods],
            "class_free_methods": [m.name for m in METHODS if isinstance(m, AttentionMethod) and not m.counterfactual and m.name in methods],
            # Why a method camserve has is not offered, for the server's refusal.
            "unavailable_methods": {name: attention_note or "the model has no keras MultiHeadAttention" for name in NAMES if name not in methods},
            # What class_index and method codes mean beyond 0..C-1 and -1 (explainer.py).
            "class_ranks": True,
            "counterfactual_code": COUNTERFACTUAL,
            **({"layer_code": LAYER_CODE, "fusions": list(FUSIONS)} if len(targets) > 1 else {}),
            **({"input_contract": _contract_metadata(contract)} if contract else {}),
            "classes": classes,
            "source": src.description,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        repository.write_metadata(staging, metadata)

    with steps.step("verify against a float64 reference"):
        if opts.verify:
            _check(staging, src.model, targets, mode, channels, input_size, opts.head, steps)
        else:
            steps.say("      skipped (--no-verify)")

    final = repository.version_dir(opts.repo, opts.name, version)
    with steps.step(f"publish {final}"):
        staging.rename(final)
    return final


def _check(staging, model, targets, mode, channels, input_size, head, steps):
    try:
        report = verify(staging, model, targets, mode, channels, input_size, head)
    except VerificationError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    steps.say(f"      max error: {report} (tolerance {TOLERANCE:.0e})")
    errors = [report.logits_error, report.heatmap_error]
    if report.contract is not None:
        errors += [report.contract.output_error, report.contract.explain.logits_error, report.contract.explain.heatmap_error]
    if not report.ok or not np.isfinite(errors).all():
        shutil.rmtree(staging, ignore_errors=True)
        raise VerificationError(
            f"the exported model disagrees with the float64 reference: {report} (tolerance {TOLERANCE:.0e}); nothing was published"
        )


def _contract_metadata(contract: InputContract) -> dict:
    """How TF Serving's clients reach the model (camserve.json `input_contract`)."""
    return {
        "signature": "serving_default",
        "explain_signature": "explain_input",
        "input": contract.input,
        "dtype": contract.dtype.name,
        "shape": list(contract.shape),
        "output": contract.output,
    }
