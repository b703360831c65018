"""What users' photos carry besides pixels, answered over the wire: EXIF
orientation (the server and `camserve explain` both explain the upright image),
transparency (composited onto a background), 16-bit depth, and shapes far from
the model's aspect ratio."""

import struct
import subprocess
import sys
import tracemalloc
import zlib

import cv2
import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from camserve import images
from camserve.client import Client
from camserve.v1 import camserve_pb2 as pb
from tests import reference
from tests.conftest import SHAPED_BACKGROUND

# Stored pixels -> the upright image, per the EXIF 2.3 Orientation tag (0x0112).
UPRIGHT = {
    1: lambda x: x,
    2: lambda x: x[:, ::-1],  # mirrored
    3: lambda x: np.rot90(x, 2),
    4: lambda x: x[::-1],  # mirrored
    5: lambda x: np.swapaxes(x, 0, 1),  # mirrored
    6: lambda x: np.rot90(x, -1),  # stored rotated 90 degrees counter-clockwise
    7: lambda x: np.rot90(np.swapaxes(x, 0, 1), 2),  # mirrored
    8: lambda x: np.rot90(x, 1),
}


def tiff_orientation(orientation: int, big_endian: bool) -> bytes:
    """An EXIF TIFF block whose IFD0 holds one entry: Orientation (SHORT, count 1)."""
    e = ">" if big_endian else "<"
    entry = struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0)
    return (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8) + struct.pack(e + "H", 1) + entry + bytes(4)


def jpeg_with_exif(jpeg: bytes, exif: bytes) -> bytes:
    payload = b"Exif\0\0" + exif
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def png_bytes(pixels: np.ndarray, exif: bytes | None = None) -> bytes:
    """A PNG written by hand, so that gray+alpha and an eXIf chunk are possible:
    pixels [H,W,C] in PNG order (gray, gray+alpha, RGB, RGBA), uint8 or uint16."""
    height, width, channels = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", width, height, 8 * pixels.itemsize, color_type, 0, 0, 0)
    rows = pixels.astype(pixels.dtype.newbyteorder(">")).reshape(height, -1).view(np.uint8)
    scanlines = np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes()  # filter type 0 per row
    exif_chunk = chunk(b"eXIf", exif) if exif else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + exif_chunk + chunk(b"IDAT", zlib.compress(scanlines)) + chunk(b"IEND", b"")


def oriented(container: str, stored_rgb: np.ndarray, orientation: int, big_endian: bool) -> tuple[bytes, np.ndarray]:
    """(encoded bytes carrying `orientation`, the pixels the file stores, decoded as RGB)."""
    exif = tiff_orientation(orientation, big_endian)
    if container == "jpeg":
        plain = cv2.imencode(".jpg", stored_rgb[:, :, ::-1])[1].tobytes()
        data = jpeg_with_exif(plain, exif)
    elif container == "png":
        plain = data = png_bytes(stored_rgb, exif)
    else:  # a WebP EXIF chunk needs the extended (VP8X) container: let OpenCV's writer build it
        ok, data = cv2.imencodeWithMetadata(".webp", stored_rgb[:, :, ::-1], [cv2.IMAGE_METADATA_EXIF], [np.frombuffer(exif, np.uint8)])
        assert ok
        plain = data = np.asarray(data).tobytes()
    stored = cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
    # OpenCV applies EXIF itself when it may drop alpha: a check on the table above.
    np.testing.assert_array_equal(UPRIGHT[orientation](stored), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB))
    return data, stored


@pytest.fixture(scope="module")
def shaped(shaped_server):
    with Client(shaped_server.target) as client:
        yield client


@pytest.fixture(scope="module")
def client(server):
    with Client(server.target, model="tiny") as client:
        yield client


def assert_same_answer(got, want):
    assert got.class_index == want.class_index
    assert got.image_size == want.image_size
    assert got.region == want.region
    np.testing.assert_allclose(got.heatmap, want.heatmap, atol=1e-6)
    np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "container, orientation, big_endian",
    [("jpeg", 6, False), ("jpeg", 8, True), ("jpeg", 3, False), ("jpeg", 5, True), ("jpeg", 2, False), ("jpeg", 7, False),
     ("jpeg", 4, True), ("png", 6, True), ("webp", 8, False)],
)
def test_exif_oriented_images_are_answered_as_their_upright_pixels(shaped, container, orientation, big_endian):
    stored = reference.smooth_images(1, (40, 72), seed=60 + orientation)[0]
    data, pixels = oriented(container, stored, orientation, big_endian)
    upright = np.ascontiguousarray(UPRIGHT[orientation](pixels))
    for resize in ("stretch", "center_crop"):
        options = dict(model="wide", resize=resize, original_size=True, return_scores=True)
        got, want = shaped.explain(data, **options), shaped.explain(upright, **options)
        assert got.image_size == upright.shape[:2]
        assert_same_answer(got, want)


def test_cli_overlays_line_up_with_the_heatmap(shaped_server, shaped, tmp_path):
    """`camserve explain` on EXIF-rotated photos draws on the upright image the
    server explained: the overlays equal those of the upright pixels sent raw."""
    uprights = {}
    for orientation in (6, 7):
        stored = reference.smooth_images(1, (40, 72), seed=70 + orientation)[0]
        data, pixels = oriented("jpeg", stored, orientation, big_endian=False)
        (tmp_path / f"photo{orientation}.jpg").write_bytes(data)
        uprights[orientation] = np.ascontiguousarray(UPRIGHT[orientation](pixels))
    files = [str(tmp_path / f"photo{o}.jpg") for o in uprights]
    command = [sys.executable, "-m", "camserve", "explain", *files, "--target", shaped_server.target, "--model", "wide"]
    done = subprocess.run([*command, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for orientation, upright in uprights.items():
        [written] = (tmp_path / "out").glob(f"photo{orientation}_*.png")
        overlay = cv2.imread(str(written), cv2.IMREAD_COLOR_RGB)
        want = shaped.explain(upright, model="wide").overlay(upright)
        assert overlay.shape == upright.shape
        assert np.abs(overlay.astype(int) - want).max() <= 1  # batch-mates may move a heatmap value by an ulp


def composite(rgb, alpha, background) -> np.ndarray:
    a = alpha[..., None].astype(np.float64) / 255
    return np.round(rgb * a + np.asarray(background, np.float64) * (1 - a)).astype(np.uint8)


def transparent_image(size, seed) -> tuple[np.ndarray, np.ndarray]:
    """RGB pixels and an alpha channel with opaque, transparent and half-transparent regions."""
    rgb = reference.smooth_images(1, size, seed=seed)[0]
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[: size[0] // 3] = 0
    alpha[:, : size[1] // 4] = 128
    return rgb, alpha


def test_transparent_pixels_are_composited_onto_white_or_the_requested_background(client):
    rgb, alpha = transparent_image((32, 40), seed=80)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([rgb, alpha])
    sent = {
        "RGBA PNG": png_bytes(rgba),
        "16-bit RGBA PNG": png_bytes(rgba.astype(np.uint16) * 257),
        "raw RGBA": rgba,
        "gray+alpha PNG": png_bytes(np.dstack([gray, alpha])),
        "raw gray+alpha": np.dstack([gray, alpha]),
    }
    for background, options in (((255, 255, 255), {}), ((0, 0, 0), {"background": 0x000000}), ((200, 30, 90), {"background": (200, 30, 90)})):
        want_rgb = client.explain(composite(rgb, alpha, background), return_scores=True)
        want_gray = client.explain(composite(np.dstack([gray] * 3), alpha, background), return_scores=True)
        for name, image in sent.items():
            got = client.explain(image, return_scores=True, **options)
            assert_same_answer(got, want_gray if "gray" in name else want_rgb), f"{name} on {background}"


def test_the_servers_background_flag_is_the_default_natively_and_over_kserve(shaped_server, shaped):
    rgb, alpha = transparent_image((40, 72), seed=81)
    rgba = np.dstack([rgb, alpha])
    background = [(SHAPED_BACKGROUND >> shift) & 255 for shift in (16, 8, 0)]
    want = shaped.explain(composite(rgb, alpha, background), model="wide", return_scores=True)
    assert_same_answer(shaped.explain(png_bytes(rgba), model="wide", return_scores=True), want)
    kserve = triton.InferenceServerClient(url=shaped_server.target)
    encoded = triton.InferInput("image_bytes", [1], "BYTES")
    encoded.set_data_from_numpy(np.array([png_bytes(rgba)], dtype=object))
    raw = triton.InferInput("images", [1, *rgba.shape], "UINT8")
    raw.set_data_from_numpy(rgba[None])
    for tensor in (encoded, raw):
        result = kserve.infer("wide", [tensor])
        assert result.as_numpy("class_index")[0] == want.class_index
        np.testing.assert_allclose(result.as_numpy("heatmap")[0], want.heatmap, atol=1e-6)
    kserve.close()


def eight_bits(values: np.ndarray) -> np.ndarray:
    """The nearest 8-bit level: round(v * 255 / 65535), in exact integers."""
    return ((values.astype(np.int64) * 255 + 65535 // 2) // 65535).astype(np.uint8)


def test_16_bit_levels_map_to_the_nearest_8_bit_level_without_wide_temporaries():
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    np.testing.assert_array_equal(images.to_rgb(every), np.repeat(eight_bits(every)[:, :, None], 3, axis=2))
    assert images.to_rgb(np.array([[0, 65535]], np.uint16)).tolist() == [[[0] * 3, [255] * 3]]
    big = np.random.default_rng(0).integers(0, 65536, (1000, 1000, 3), dtype=np.uint16)
    tracemalloc.start()
    images.to_rgb(big, bgr=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1.1 * big.size, f"{peak / big.size:.1f} bytes of temporaries per value; the output needs 1"


def test_16_bit_png_is_answered_as_its_8_bit_levels(client):
    levels = np.random.default_rng(1).permutation(65536).astype(np.uint16).reshape(128, 128, 4)[:, :, :3]
    result = client.explain(png_bytes(levels), return_scores=True)
    assert_same_answer(result, client.explain(eight_bits(levels), return_scores=True))


# Far from every model's aspect ratio: one pixel thick, one way or the other.
EXTREME = [(1, 1), (1, 2000), (2000, 1), (1, 3), (3, 1), (2, 700), (700, 2)]


@pytest.mark.parametrize("model", ["wide", "tall"])
@pytest.mark.parametrize("resize", ["stretch", "center_crop", "letterbox"])
def test_extreme_aspect_ratios_are_answered_with_the_region_seen(shaped, model, resize):
    for height, width in EXTREME:
        image = reference.smooth_images(1, (max(height, 4), max(width, 4)), seed=90)[0][:height, :width]
        at_size = shaped.explain(image, model=model, resize=resize, original_size=True)
        assert at_size.image_size == (height, width) and at_size.heatmap.shape == (height, width)
        result = shaped.explain(image, model=model, resize=resize)
        r = result.region
        assert r.x0 < r.x1 and r.y0 < r.y1, (height, width, r)
        if resize == "center_crop":  # whole pixels inside the image, and exactly what was explained
            assert 0 <= r.x0 and 0 <= r.y0 and r.x1 <= width and r.y1 <= height, (height, width, r)
            crop = np.ascontiguousarray(image[int(r.y0) : int(r.y1), int(r.x0) : int(r.x1)])
            cropped = shaped.explain(crop, model=model)
            assert cropped.class_index == result.class_index
            np.testing.assert_allclose(result.heatmap, cropped.heatmap, atol=1e-6)
        elif resize == "letterbox":  # the canvas covers the whole image
            assert r.x0 <= 0 and r.y0 <= 0 and r.x1 >= width and r.y1 >= height, (height, width, r)
        else:
            assert (r.x0, r.y0, r.x1, r.y1) == (0, 0, width, height)


def test_malformed_exif_is_ignored_and_bad_backgrounds_are_refused(client):
    stored = reference.smooth_images(1, (20, 36), seed=95)[0]
    plain = cv2.imencode(".jpg", stored[:, :, ::-1])[1].tobytes()
    want = client.explain(plain, return_scores=True)
    good = tiff_orientation(6, big_endian=False)
    malformed = [good[:10], good[:8] + b"\xff\xff", b"II*\0" + struct.pack("<I", 2**31), tiff_orientation(9, False), tiff_orientation(0, True)]
    for exif in malformed:
        assert_same_answer(client.explain(jpeg_with_exif(plain, exif), return_scores=True), want)
    request = pb.ExplainRequest(model="tiny", image=pb.Image(encoded=plain), background=0x1000000)
    with pytest.raises(grpc.RpcError) as err:
        client.stub.Explain(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "0xRRGGBB" in err.value.details()
