"""Encoded images -> upright RGB uint8 pixels, one way for the server and the
client, so that an overlay is drawn on the very image that was explained:
EXIF orientation applied (phones store pixels sideways and say so in EXIF),
transparency composited onto a background, 16-bit levels rounded to 8 bits.

OpenCV applies EXIF orientation itself only when it may drop alpha (any flag but
IMREAD_UNCHANGED), so the Orientation tag is read here from the EXIF block that
cv2.imdecodeWithMetadata hands back from a JPEG APP1, PNG eXIf or WebP EXIF chunk.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from .colors import WHITE, channels

_ORIENTATION = 0x0112  # the EXIF/TIFF tag
_SHORT = 3  # its TIFF type
_BAND = 1 << 18  # pixels composited at a time, which bounds the uint16 temporaries

# Stored pixels -> upright, per Orientation value (2, 4, 5 and 7 are mirrored).
_UPRIGHT = {
    2: lambda x: cv2.flip(x, 1),
    3: lambda x: cv2.rotate(x, cv2.ROTATE_180),
    4: lambda x: cv2.flip(x, 0),
    5: cv2.transpose,
    6: lambda x: cv2.rotate(x, cv2.ROTATE_90_CLOCKWISE),
    7: lambda x: cv2.flip(cv2.transpose(x), -1),
    8: lambda x: cv2.rotate(x, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def exif_orientation(exif: bytes) -> int:
    """The Orientation (1-8) in IFD0 of an EXIF TIFF block; 1 when absent or malformed."""
    exif = exif.removeprefix(b"Exif\0\0")  # some writers keep the JPEG APP1 prefix in PNG/WebP
    order = {b"II": "<", b"MM": ">"}.get(exif[:2])
    if order is None or len(exif) < 8:
        return 1
    (ifd,) = struct.unpack(order + "I", exif[4:8])
    if ifd + 2 > len(exif):
        return 1
    (count,) = struct.unpack(order + "H", exif[ifd : ifd + 2])
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(exif) - 9), 12):
        tag, kind, _, value = struct.unpack(order + "HHIH", exif[entry : entry + 10])
        if tag == _ORIENTATION and kind == _SHORT:
            return value if value in _UPRIGHT else 1
    return 1


def decode(data: bytes) -> np.ndarray | None:
    """Encoded bytes -> upright pixels as OpenCV decodes them (gray, BGR or BGRA;
    8 or 16 bits); None when OpenCV cannot decode them."""
    image, kinds, blocks = cv2.imdecodeWithMetadata(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    for kind, block in zip(np.ravel(kinds), blocks):
        if kind == cv2.IMAGE_METADATA_EXIF:
            upright = _UPRIGHT.get(exif_orientation(np.asarray(block).tobytes()))
            return upright(image) if upright else image
    return image


def to_rgb(image: np.ndarray, background: int = WHITE, bgr: bool = True) -> np.ndarray:
    """Gray, gray+alpha, colour or colour+alpha pixels [H,W] or [H,W,C] of 8 or 16
    bits -> RGB uint8, alpha composited onto `background` (0xRRGGBB). Colour is in
    OpenCV's BGR(A) order, or RGB(A) with bgr=False. ValueError for other pixels."""
    if image.dtype == np.uint16:
        # round(v * 255 / 65535) into uint8, block by block inside OpenCV.
        image = cv2.convertScaleAbs(image, alpha=255 / 65535)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {image.dtype}; send 8- or 16-bit images")
    if image.ndim == 2:
        image = image[:, :, None]
    count = image.shape[2]
    if count in (1, 2):
        rgb = cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    elif count == 3:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image
    elif count == 4:
        rgb = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    else:
        raise ValueError(f"images with {count} channels are not supported")
    if count in (2, 4):
        _composite(rgb, image[:, :, -1], background)
    return rgb


def _composite(rgb: np.ndarray, alpha: np.ndarray, background: int):
    """rgb <- round((rgb * alpha + background * (255 - alpha)) / 255), in place."""
    color = np.array(channels(background), np.uint16)
    rows = max(1, _BAND // rgb.shape[1])
    for top in range(0, rgb.shape[0], rows):
        a = alpha[top : top + rows, :, None].astype(np.uint16)
        mixed = rgb[top : top + rows] * a + color * (255 - a)  # at most 255 * 255: fits in uint16
        rgb[top : top + rows] = (mixed + 127) // 255  # 255 is odd: x / 255 never ends in .5


def read_rgb(path, background: int = WHITE) -> np.ndarray:
    """An image file as the server sees it: upright RGB uint8, alpha composited."""
    image = decode(Path(path).read_bytes())
    if image is None:
        raise ValueError(f"{path} is not an image OpenCV can decode")
    return to_rgb(image, background)
