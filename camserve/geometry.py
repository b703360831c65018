"""How an image of any size becomes the model's input canvas, and how a heatmap
over that canvas maps back onto the image. Shared by the server (which fits
images and may return maps at the original size) and the client (heatmap_at).

A fit is described by one rectangle, the region of the original image's pixel
plane that the canvas covers: the whole image (stretch), a centered crop of the
model's aspect ratio (center crop), or more than the image (letterbox, padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

STRETCH, CENTER_CROP, LETTERBOX = 0, 1, 2
LETTERBOX_FILL = 114  # the gray YOLO-style letterboxes use


@dataclass(frozen=True)
class Region:
    x0: float
    y0: float
    x1: float
    y1: float

    def scaled(self, sx: float, sy: float) -> Region:
        return Region(self.x0 * sx, self.y0 * sy, self.x1 * sx, self.y1 * sy)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width < image.shape[1] or height < image.shape[0]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def fit(image: np.ndarray, height: int, width: int, mode: int = STRETCH) -> tuple[np.ndarray, Region]:
    """RGB uint8 [H0,W0,3] -> (canvas [height,width,3], the region it covers)."""
    h0, w0 = image.shape[:2]
    if mode == STRETCH:
        return _resize(image, width, height), Region(0.0, 0.0, float(w0), float(h0))
    if mode == CENTER_CROP:
        scale = max(width / w0, height / h0)
        # At least a pixel: on an image far thinner than the model, the thin side rounds to 0.
        cw, ch = min(w0, max(1, round(width / scale))), min(h0, max(1, round(height / scale)))
        x0, y0 = (w0 - cw) // 2, (h0 - ch) // 2
        crop = image[y0 : y0 + ch, x0 : x0 + cw]
        canvas = _resize(crop, width, height)
        # A crop already at the model's size is a view: copy it, or it pins the whole image while it waits.
        canvas = canvas.copy() if np.shares_memory(canvas, image) else canvas
        return canvas, Region(float(x0), float(y0), float(x0 + cw), float(y0 + ch))
    if mode == LETTERBOX:
        scale = min(width / w0, height / h0)
        nw, nh = max(1, round(w0 * scale)), max(1, round(h0 * scale))
        left, top = (width - nw) // 2, (height - nh) // 2
        canvas = np.full((height, width, 3), LETTERBOX_FILL, np.uint8)
        canvas[top : top + nh, left : left + nw] = _resize(image, nw, nh)
        sx, sy = w0 / nw, h0 / nh  # original pixels per canvas pixel
        return canvas, Region(-left * sx, -top * sy, (width - left) * sx, (height - top) * sy)
    raise ValueError(f"unknown resize mode {mode}")


def heatmap_to_image(heatmap: np.ndarray, region: Region, width: int, height: int) -> np.ndarray:
    """The [h,w] map, spread bilinearly over `region`, sampled at every pixel of a
    width x height image; zero where the region does not reach (a crop's margins)."""
    heatmap = np.asarray(heatmap, np.float32)
    h, w = heatmap.shape
    sx, sy = (region.x1 - region.x0) / w, (region.y1 - region.y0) / h
    # Image pixel centre x+0.5 = x0 + (u+0.5)*sx, as cv2.resize aligns centres.
    to_image = np.array([[sx, 0, region.x0 + 0.5 * sx - 0.5], [0, sy, region.y0 + 0.5 * sy - 0.5]], np.float64)
    out = cv2.warpAffine(
        heatmap, to_image, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    inside = ((ys >= region.y0) & (ys <= region.y1))[:, None] & ((xs >= region.x0) & (xs <= region.x1))[None, :]
    return np.clip(np.where(inside, out, 0.0), 0.0, 1.0).astype(np.float32)
