"""Request bytes -> RGB uint8 pixels at the model's size, with limits checked
before the work they bound; and which images are cheap enough to decode on the
event loop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from camserve import geometry, images

from .errors import invalid
from .image_headers import image_size, sniff
from .model import Model


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


@dataclass(frozen=True)
class Encoded:
    """JPEG/PNG/BMP/WebP bytes."""

    data: bytes


@dataclass(frozen=True)
class Raw:
    """Raw uint8 pixels in RGB order (1 = gray, 2 = gray + alpha, 3 = RGB, 4 = RGBA)."""

    pixels: bytes
    height: int
    width: int
    channels: int


def decode(image: Encoded | Raw, max_pixels: int, background: int) -> np.ndarray:
    if isinstance(image, Raw):
        return decode_raw(image.pixels, image.height, image.width, image.channels, max_pixels, background)
    return decode_encoded(image.data, max_pixels, background)


# Images whose decoding and fitting cost less than a hop to the decode pool and back: up
# to this many times the model's input pixels, as the header declares them (a 4 KB PNG
# may inflate to 36 megapixels), and for an encoded image at most this many bytes.
INLINE_MODEL_SIZES = 4
INLINE_BYTES = 16 * 1024


def raw_is_cheap(height: int, width: int, model: Model) -> bool:
    return height * width <= INLINE_MODEL_SIZES * model.height * model.width


def encoded_is_cheap(data: bytes, model: Model) -> bool:
    """Small, and declaring few pixels; or so malformed that decode_encoded refuses it
    before any work."""
    if len(data) > INLINE_BYTES:
        return False
    kind = sniff(data)
    size = image_size(data, kind) if kind else None
    return size is None or raw_is_cheap(size[1], size[0], model)


def is_cheap(image: Encoded | Raw, model: Model) -> bool:
    if isinstance(image, Raw):
        return raw_is_cheap(image.height, image.width, model)
    return encoded_is_cheap(image.data, model)


def fit(pixels, model: Model, resize: int = geometry.STRETCH):
    """Decode and fit, on the decode pool, for every API: pixels() -> (canvas at the
    model's size, (the region it covers, the decoded image's height and width))."""
    image = pixels()
    canvas, region = geometry.fit(image, model.height, model.width, resize)
    return canvas, (region, image.shape[:2])
