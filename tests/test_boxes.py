"""Localisation boxes (the Grad-CAM paper's rule): checked against a flood fill
written here, on maps with several regions, on letterboxed non-square images
over the wire, and drawn by `camserve explain --box`."""

import csv
import subprocess
import sys
from collections import deque

import cv2
import numpy as np
import pytest

from camserve.client import Client
from camserve.boxes import Box, largest_region
from tests import reference


def flood_fill_box(heatmap: np.ndarray, threshold: float):
    """(x0, y0, x1, y1) of the largest 8-connected set of pixels >= threshold x max."""
    mask = heatmap >= threshold * heatmap.max()
    seen = np.zeros_like(mask)
    best = (0, None)
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, members = deque([start]), []
        while queue:
            y, x = queue.popleft()
            members.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        if len(members) > best[0]:
            ys, xs = zip(*members)
            best = (len(members), (min(xs), min(ys), max(xs) + 1, max(ys) + 1))
    return best[1]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.15, 0.5])
def test_the_box_surrounds_the_largest_region_above_the_threshold(seed, threshold):
    rng = np.random.default_rng(seed)
    heatmap = cv2.GaussianBlur(rng.random((37, 61)).astype(np.float32) ** 4, (0, 0), 2.0)  # several blobs
    heatmap /= heatmap.max()
    box = largest_region(heatmap, threshold)
    assert (box.x0, box.y0, box.x1, box.y1) == flood_fill_box(heatmap, threshold)


def test_regions_touching_only_at_a_corner_are_one_region():
    heatmap = np.zeros((10, 10), np.float32)
    heatmap[2:4, 2:4] = 1.0
    heatmap[4:6, 4:7] = 0.5  # meets the first square diagonally
    heatmap[8:10, 0:5] = 0.9  # the larger region alone: 10 pixels, fewer than 4 + 6
    assert largest_region(heatmap) == Box(2, 2, 7, 6)


def test_an_all_zero_map_has_no_box_and_the_threshold_is_a_fraction():
    assert largest_region(np.zeros((7, 7), np.float32)) is None
    for wrong in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            largest_region(np.ones((3, 3), np.float32), wrong)


def test_box_geometry():
    a, b = Box(0, 0, 10, 10), Box(5, 5, 15, 15)
    assert a.iou(b) == pytest.approx(25 / 175) and a.iou(a) == 1.0 and a.iou(Box(20, 20, 30, 30)) == 0.0
    assert a.contains(0, 9.5) and not a.contains(10, 5)


@pytest.fixture(scope="module")
def shaped(shaped_server):
    with Client(shaped_server.target) as client:
        yield client


def test_a_box_on_a_letterboxed_image_lies_on_the_image_as_sent(shaped):
    image = reference.smooth_images(1, (90, 50), seed=80)[0]  # tall, sent to the wide model: letterboxed
    result = shaped.explain(image, model="wide", resize="letterbox")
    box = result.box()
    # Independently: the map at the canvas size, cut to where the image sits, resized to the image.
    height, width = 48, 96  # the wide model's input
    scale = min(width / 50, height / 90)
    nw, nh = round(50 * scale), round(90 * scale)
    left, top = (width - nw) // 2, (height - nh) // 2
    canvas_map = cv2.resize(result.heatmap, (width, height), interpolation=cv2.INTER_LINEAR)
    on_image = cv2.resize(canvas_map[top : top + nh, left : left + nw], (50, 90), interpolation=cv2.INTER_LINEAR)
    want = flood_fill_box(on_image, 0.15)
    assert 0 <= box.x0 < box.x1 <= 50 and 0 <= box.y0 < box.y1 <= 90
    assert all(abs(got - w) <= 2 for got, w in zip((box.x0, box.y0, box.x1, box.y1), want)), (box, want)


def test_explain_command_draws_and_lists_the_box(shaped, shaped_server, tmp_path):
    image = reference.smooth_images(1, (48, 96), seed=81)[0]
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    command = [sys.executable, "-m", "camserve", "explain", str(path), "--target", shaped_server.target, "--model", "wide"]
    done = subprocess.run([*command, "--out", str(tmp_path / "out"), "--box", "0.3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [row] = csv.DictReader((tmp_path / "out" / "results.csv").open())
    want = shaped.explain(image, model="wide").box(0.3)
    assert row["box"] == f"{want.x0} {want.y0} {want.x1} {want.y1}"
    drawn = cv2.imread(row["heatmap_file"], cv2.IMREAD_COLOR_RGB)
    plain = shaped.explain(image, model="wide").overlay(image)
    changed = np.argwhere(np.abs(drawn.astype(int) - plain).max(axis=2) > 1)
    assert len(changed) and changed[:, 1].min() == want.x0 and changed[:, 1].max() == want.x1 - 1
    assert changed[:, 0].min() == want.y0 and changed[:, 0].max() == want.y1 - 1

    bad = subprocess.run([*command, "--out", str(tmp_path / "bad"), "--box", "2"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--box takes a fraction" in bad.stderr
