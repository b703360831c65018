"""Preprocessing modes against the formulas keras.applications document."""

import numpy as np
import pytest

from camserve.export.preprocess import preprocess

PIXELS = np.array([[[[0, 128, 255], [10, 20, 30]]]], np.uint8)  # [1,1,2,3] RGB


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("none", PIXELS.astype(np.float64)),
        ("scale", PIXELS / 255.0),
        ("tf", PIXELS / 127.5 - 1.0),
        ("caffe", PIXELS[..., ::-1] - np.array([103.939, 116.779, 123.68])),
        ("torch", (PIXELS / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])),
    ],
)
def test_modes(mode, expected):
    np.testing.assert_allclose(preprocess(PIXELS, mode, channels=3).numpy(), expected, rtol=1e-5, atol=1e-4)


def test_one_channel_models_get_luminance():
    gray = preprocess(PIXELS, "none", channels=1).numpy()
    np.testing.assert_allclose(gray[..., 0], PIXELS @ np.array([0.2989, 0.587, 0.114]), atol=0.05)
