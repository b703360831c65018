"""Object boxes from heatmaps, as the Grad-CAM paper localises: keep the pixels
above a fraction of the map's maximum, and box the largest connected region of
them (OpenCV's connected components, 8-connected)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

THRESHOLD = 0.15  # of the maximum, the paper's value


@dataclass(frozen=True)
class Box:
    """Pixels x0 <= x < x1, y0 <= y < y1 of the image as sent."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def area(self) -> int:
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)

    def iou(self, other: Box) -> float:
        inner = Box(max(self.x0, other.x0), max(self.y0, other.y0), min(self.x1, other.x1), min(self.y1, other.y1)).area
        union = self.area + other.area - inner
        return inner / union if union else 0.0

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x < self.x1 and self.y0 <= y < self.y1


def largest_region(heatmap: np.ndarray, threshold: float = THRESHOLD) -> Box | None:
    """The box around the largest 8-connected region where heatmap >= threshold x
    its maximum; None for a map with no positive value."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold is a fraction of the maximum in (0, 1], not {threshold}")
    peak = float(np.max(heatmap)) if heatmap.size else 0.0
    if not peak > 0.0:
        return None
    mask = np.asarray(heatmap >= threshold * peak, np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:count, cv2.CC_STAT_AREA]))  # label 0 is the background
    x, y, w, h = (int(stats[largest, s]) for s in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    return Box(x, y, x + w, y + h)


def draw(image_rgb: np.ndarray, box: Box, color=(255, 255, 255), thickness: int | None = None) -> np.ndarray:
    """A copy of the image with the box's outline drawn inside its pixels."""
    thickness = thickness or max(1, round(max(image_rgb.shape[:2]) / 200))
    out = np.ascontiguousarray(image_rgb).copy()
    cv2.rectangle(out, (box.x0, box.y0), (box.x1 - 1, box.y1 - 1), color, thickness)
    return out
