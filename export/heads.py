"""What a classifier's last operation means, and the outputs that follow from it.

    softmax  logits = the scores before the softmax; probabilities = softmax(logits)
    sigmoid  multi-label: logits before the sigmoid; probabilities = sigmoid(logits) per class
    binary   one sigmoid unit z read as two classes: logits [-z, z], probabilities [1-p, p]
    linear   the output is explained as it is; probabilities = softmax(output)

The last operation is recognised by what it computes, not by its name: its
activation (a layer's `activation`, or the whole op for an Activation, Softmax
or Lambda layer or a keras.ops call) is run on random scores and compared with
softmax, sigmoid and the identity. So `tf.nn.softmax`, `keras.ops.sigmoid` and
`Activation("softmax")` are the same head, and an op that normalises some other
way (a temperature, a hard sigmoid, a log-softmax) is refused rather than
explained through with wrong numbers.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .choices import HEADS as KINDS

SIGMOID_KINDS = ("sigmoid", "binary")

# What a probe finds an operation computes.
SOFTMAX, SIGMOID, IDENTITY, NORMALISING, OTHER = "softmax", "sigmoid", "identity", "normalising", "other"

class HeadError(ValueError):
    """The last layer cannot be read as a head; the message says what to pass."""


def probe(fn, shape, dtype) -> str:
    """What fn computes on scores of `shape` (without the batch axis)."""
    z = np.random.default_rng(0).normal(0.0, 4.0, (4, *shape)).astype(dtype)
    try:
        y = np.asarray(fn(tf.constant(z)), np.float64)
    except Exception:  # noqa: BLE001 - an op that cannot run alone is no activation
        return OTHER
    if y.shape != z.shape:
        return OTHER
    z = z.astype(np.float64)

    def close(want):
        return np.allclose(y, want, rtol=1e-4, atol=1e-6)

    exp = np.exp(z - z.max(axis=-1, keepdims=True))
    if close(z):
        return IDENTITY
    if close(exp / exp.sum(axis=-1, keepdims=True)):
        return SOFTMAX
    if close(1.0 / (1.0 + np.exp(-z))):
        return SIGMOID
    in_unit_range = y.min() >= -1e-6 and y.max() <= 1.0 + 1e-6
    log_normalised = np.allclose(np.exp(y).sum(axis=-1), 1.0, rtol=1e-4)
    return NORMALISING if in_unit_range or log_normalised else OTHER


def decide(found: str, override: str | None, width: int, where: str) -> tuple[str, bool]:
    """(head kind, whether the op is stripped to reach the logits)."""
    if override:
        _check_width(override, width)
        return override, override != "linear" and found in (SOFTMAX, SIGMOID, NORMALISING)
    if found == SOFTMAX:
        if width == 1:
            raise HeadError(
                f"the last layer {where!r} is a softmax over one unit, which is always 1.0; "
                "a one-unit classifier needs a sigmoid (then it exports as --head binary)"
            )
        return "softmax", True
    if found == SIGMOID:
        return ("binary" if width == 1 else "sigmoid"), True
    if found == NORMALISING:
        raise HeadError(
            f"the last layer {where!r} normalises its input but is neither a softmax nor a sigmoid, "
            "so its input cannot be taken as logits. Pass --head softmax|sigmoid|binary if it applies that "
            "function to its input (export then checks it against the model's outputs), or --head linear "
            "to explain its output as it is"
        )
    return "linear", False


def _check_width(kind: str, width: int):
    if kind not in KINDS:
        raise HeadError(f"--head {kind!r} is not one of {', '.join(KINDS)}")
    if kind == "binary" and width != 1:
        raise HeadError(f"--head binary needs one output unit; this model has {width}")
    if kind in ("softmax", "sigmoid") and width == 1:
        raise HeadError(f"--head {kind} needs several output units; a one-unit sigmoid model is --head binary")


def logits(kind: str, scores):
    """The explained logits from the head's scores [N, units]."""
    return tf.concat([-scores, scores], axis=-1) if kind == "binary" else scores


def probabilities(kind: str, logits):
    return tf.sigmoid(logits) if kind in SIGMOID_KINDS else tf.nn.softmax(logits)


def model_output(kind: str, stripped: bool, outputs):
    """What the model itself outputs, from the explained `outputs` (logits, probabilities):
    its probabilities when the head's op was stripped to reach the logits, its scores
    otherwise; for a binary head the positive class's column only."""
    y = outputs["probabilities" if stripped else "logits"]
    return y[:, 1:] if kind == "binary" else y
