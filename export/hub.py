"""keras-hub classifiers: the preprocessing their image converter does, as one of
camserve's preprocess modes.

A keras-hub classifier saves its preprocessor (resize, scale, offset) with it,
but `model(x)` never applies it: `classifier.predict` does. An export that did
not compile it into the signature would serve other probabilities than the
user's own `predict`. Which mode it is is measured, as heads are (heads.py):
the converter and each mode run on the same random image at the model's input
size, and the one that agrees is used; a converter no mode reproduces is
refused rather than served with other numbers.
"""

from __future__ import annotations

import numpy as np

from .preprocess import MODES

# float32 arithmetic: scale and offset written as 1/127.5 - 1 or as mean/std agree to this.
TOLERANCE = 1e-5


def converter(model):
    """The image converter of a keras-hub classifier's preprocessor; None for other models."""
    return getattr(getattr(model, "preprocessor", None), "image_converter", None)


def preprocess_mode(model) -> str | None:
    """The mode equal to the model's own image converter; None when it has none.
    Raises ValueError when it has one that no mode reproduces."""
    convert = converter(model)
    if convert is None:
        return None
    size = tuple(model.inputs[0].shape[1:])
    pixels = np.random.default_rng(0).uniform(0, 255, (1, *size)).astype(np.float32)
    expected = np.asarray(convert(pixels), np.float32)
    if expected.shape != pixels.shape:
        raise ValueError(
            f"the model's image converter turns a {size[0]}x{size[1]} image into {list(expected.shape[1:])}, "
            "not the model's input size: export it with a converter of the model's size"
        )
    for mode, prepare in MODES.items():
        if np.allclose(np.asarray(prepare(pixels)), expected, rtol=TOLERANCE, atol=TOLERANCE):
            return mode
    scale, offset = getattr(convert, "scale", None), getattr(convert, "offset", None)
    raise ValueError(
        f"the model's image converter (scale {scale}, offset {offset}) is none of camserve's preprocess modes "
        f"({', '.join(MODES)}), so its probabilities could not be served as its own predict gives them"
    )
