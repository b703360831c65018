"""Request bytes -> RGB uint8 pixels, with limits checked before the work they bound."""

from __future__ import annotations

import cv2
import numpy as np

from .errors import invalid
from .headers import image_size, sniff


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """Gray, gray+alpha, RGB(A) or BGR(A) of 8 or 16 bits -> RGB uint8."""
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise invalid(f"unsupported pixel type {image.dtype}; send 8- or 16-bit images")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels in (1, 2):  # gray, or gray + alpha: the alpha channel is dropped
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise invalid(f"images with {channels} channels are not supported")


def _check_size(height: int, width: int, max_pixels: int):
    if height < 1 or width < 1:
        raise invalid(f"image is {width}x{height}; both sides must be at least 1 pixel")
    if height * width > max_pixels:
        raise invalid(f"image is {width}x{height} = {height * width} pixels; the limit is {max_pixels}")


def decode_encoded(data: bytes, max_pixels: int) -> np.ndarray:
    if not data:
        raise invalid("the encoded image is empty")
    kind = sniff(data)
    if kind is None:
        raise invalid(f"the encoded image ({len(data)} bytes) is not a JPEG, PNG, BMP or WebP image")
    claimed = image_size(data, kind)
    if claimed is None:
        raise invalid(f"the {kind} header ({len(data)} bytes) is truncated or malformed")
    _check_size(claimed[1], claimed[0], max_pixels)  # before decoding allocates anything
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise invalid(f"the {kind} image ({len(data)} bytes) could not be decoded: corrupt or truncated")
    _check_size(image.shape[0], image.shape[1], max_pixels)
    return _to_rgb(image)


def decode_raw(pixels: bytes, height: int, width: int, channels: int, max_pixels: int) -> np.ndarray:
    """Raw uint8 pixels in RGB order (1 = gray, 3 = RGB, 4 = RGBA)."""
    if channels not in (1, 3, 4):
        raise invalid(f"image.raw.channels is {channels}; expected 1, 3 or 4")
    _check_size(height, width, max_pixels)
    expected = height * width * channels
    if len(pixels) != expected:
        raise invalid(
            f"image.raw.pixels has {len(pixels)} bytes; {width}x{height}x{channels} needs {expected}"
        )
    image = np.frombuffer(pixels, np.uint8).reshape(height, width, channels)
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image[:, :, :3])
