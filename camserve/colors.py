"""Colours as callers write them -> 0xRRGGBB. Kept apart from camserve.images so
that command-line parsers can use it without importing OpenCV."""

from __future__ import annotations

import numbers
import string

WHITE = 0xFFFFFF


def rgb(value) -> int:
    """0xRRGGBB from an int 0xRRGGBB, an (r, g, b) sequence, or text 'RRGGBB' / '#RRGGBB'."""
    if isinstance(value, str):
        text = value.removeprefix("#")
        if len(text) == 6 and all(c in string.hexdigits for c in text):
            return int(text, 16)
    elif isinstance(value, (tuple, list)):
        if len(value) == 3 and all(isinstance(c, numbers.Integral) and 0 <= c <= 255 for c in value):
            r, g, b = map(int, value)
            return r << 16 | g << 8 | b
    elif isinstance(value, numbers.Integral) and 0 <= value <= WHITE:
        return int(value)
    raise ValueError(f"colour {value!r} is not 0xRRGGBB, (r, g, b) or RRGGBB text")


def channels(color: int) -> tuple[int, int, int]:
    """0xRRGGBB -> (r, g, b)."""
    return (color >> 16) & 255, (color >> 8) & 255, color & 255
