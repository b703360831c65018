"""Heatmaps drawn over images, as the seeds draw them (OpenCV colormaps)."""

import cv2
import numpy as np

DEFAULT_ALPHA = 0.4  # the heatmap's weight over the image


def colormap(name: str) -> int:
    try:
        return getattr(cv2, f"COLORMAP_{name.upper()}")
    except AttributeError:
        raise ValueError(f"unknown OpenCV colormap {name!r}") from None


def levels(heatmap: np.ndarray) -> np.ndarray:
    """A heatmap ([0,1] floats) as uint8 levels, round(255 * v): what the colormap
    indexes, and the wire's uint8 maps."""
    return np.round(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8)


def colorize(heatmap: np.ndarray, colormap_name: str = "jet") -> np.ndarray:
    """A heatmap ([0,1] floats) as RGB uint8 in the colormap."""
    return cv2.cvtColor(cv2.applyColorMap(levels(heatmap), colormap(colormap_name)), cv2.COLOR_BGR2RGB)


def blend(image_rgb: np.ndarray, heatmap: np.ndarray, colormap_name: str = "jet", alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """RGB uint8 image with a heatmap of the same size ([0,1] floats) blended over it."""
    colored = colorize(heatmap, colormap_name)
    return cv2.addWeighted(np.asarray(image_rgb, np.uint8), 1.0 - alpha, colored, alpha, 0.0)
