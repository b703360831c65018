"""What one request may ask of the pipeline, whichever API it came by."""

from __future__ import annotations

from dataclasses import dataclass

from camserve import colors


@dataclass(frozen=True)
class Limits:
    max_pixels: int = 40_000_000
    stream_window: int = 32  # requests one stream may have in flight (`serve` defaults it to the max batch size)
    background: int = colors.WHITE  # 0xRRGGBB under transparent pixels, unless the request sets its own
    max_response_bytes: int = 64 * 1024 * 1024  # gRPC's send limit: larger answers are refused before queueing
    default_timeout_s: float = 0.0  # the deadline of a call that brings none (`serve` defaults it to 60); 0: none
