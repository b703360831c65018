"""Heatmaps drawn over images, as the seeds draw them (OpenCV colormaps)."""

import cv2
import numpy as np


def heatmap_at(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    """The [h,w] map resized bilinearly to width x height, still float32 in [0,1]."""
    resized = cv2.resize(np.asarray(heatmap, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)


def colormap(name: str) -> int:
    try:
        return getattr(cv2, f"COLORMAP_{name.upper()}")
    except AttributeError:
        raise ValueError(f"unknown OpenCV colormap {name!r}") from None


def overlay(image_rgb: np.ndarray, heatmap: np.ndarray, colormap_name: str = "jet", alpha: float = 0.4) -> np.ndarray:
    """RGB uint8 image with the heatmap blended over it at the image's own size."""
    image_rgb = np.asarray(image_rgb, np.uint8)
    height, width = image_rgb.shape[:2]
    levels = np.uint8(np.round(255 * heatmap_at(heatmap, width, height)))
    colored = cv2.cvtColor(cv2.applyColorMap(levels, colormap(colormap_name)), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image_rgb, 1.0 - alpha, colored, alpha, 0.0)
