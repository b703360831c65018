"""Request bytes -> RGB uint8 pixels, with limits checked before the work they bound."""

from __future__ import annotations

import numpy as np

from camserve import images

from .errors import invalid
from .headers import image_size, sniff


def _rgb(image: np.ndarray, background: int, bgr: bool) -> np.ndarray:
    try:
        return images.to_rgb(image, background, bgr)
    except ValueError as err:
        raise invalid(str(err)) from None


def _check_size(height: int, width: int, max_pixels: int):
    if height < 1 or width < 1:
        raise invalid(f"image is {width}x{height}; both sides must be at least 1 pixel")
    if height * width > max_pixels:
        raise invalid(f"image is {width}x{height} = {height * width} pixels; the limit is {max_pixels}")


def decode_encoded(data: bytes, max_pixels: int, background: int) -> np.ndarray:
    """JPEG/PNG/BMP/WebP bytes -> upright RGB (EXIF orientation applied), alpha
    composited onto `background` (0xRRGGBB)."""
    if not data:
        raise invalid("the encoded image is empty")
    kind = sniff(data)
    if kind is None:
        raise invalid(f"the encoded image ({len(data)} bytes) is not a JPEG, PNG, BMP or WebP image")
    claimed = image_size(data, kind)
    if claimed is None:
        raise invalid(f"the {kind} header ({len(data)} bytes) is truncated or malformed")
    _check_size(claimed[1], claimed[0], max_pixels)  # before decoding allocates anything
    image = images.decode(data)
    if image is None:
        raise invalid(f"the {kind} image ({len(data)} bytes) could not be decoded: corrupt or truncated")
    _check_size(image.shape[0], image.shape[1], max_pixels)
    return _rgb(image, background, bgr=True)


def decode_raw(pixels: bytes, height: int, width: int, channels: int, max_pixels: int, background: int) -> np.ndarray:
    """Raw uint8 pixels in RGB order (1 = gray, 2 = gray + alpha, 3 = RGB, 4 = RGBA)."""
    if channels not in (1, 2, 3, 4):
        raise invalid(f"image.raw.channels is {channels}; expected 1, 2, 3 or 4")
    _check_size(height, width, max_pixels)
    expected = height * width * channels
    if len(pixels) != expected:
        raise invalid(
            f"image.raw.pixels has {len(pixels)} bytes; {width}x{height}x{channels} needs {expected}"
        )
    return _rgb(np.frombuffer(pixels, np.uint8).reshape(height, width, channels), background, bgr=False)
