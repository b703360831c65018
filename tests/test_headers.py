"""Header sizes read without decoding, for every accepted format, against OpenCV's encoders."""

import cv2
import numpy as np
import pytest

from camserve.server.pipeline.image_headers import image_size, sniff


@pytest.mark.parametrize("ext, kind", [(".jpg", "JPEG"), (".png", "PNG"), (".bmp", "BMP"), (".webp", "WebP")])
@pytest.mark.parametrize("shape", [(17, 33, 3), (40, 7, 1), (5, 300, 4)])
def test_sizes_match_the_encoded_image(ext, kind, shape):
    if ext == ".jpg" and shape[2] == 4:
        shape = shape[:2] + (3,)
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" and shape[1] % 2 else []  # lossless: VP8L
    data = cv2.imencode(ext, image, params)[1].tobytes()
    assert sniff(data) == kind
    assert image_size(data, kind) == (shape[1], shape[0])


def test_unknown_and_truncated():
    assert sniff(b"GIF89a") is None and sniff(b"") is None
    assert image_size(b"\x89PNG\r\n\x1a\n", "PNG") is None
    assert image_size(b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG") is None
