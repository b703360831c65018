"""Synthetic localization data set for the bundled demo model.

Every image shows exactly one filled shape (one of ``CLASSES``) of random colour,
size, position and rotation on a cluttered background: a smooth colour field
(gradient plus blobs), sinusoidal stripes, thin distractor lines and Gaussian
pixel noise.  The clutter is what makes the data set useful for Grad-CAM: a
classifier can only be right by looking at the shape, so its evidence map should
point at the shape, and ``boxes`` says where that is.

Image ``i`` of a given seed is drawn from its own random stream, so it is the
same whatever ``n`` is: ``generate(10, s)`` is a prefix of ``generate(1000, s)``.
"""

from pathlib import Path

import cv2
import numpy as np

CLASSES = ("circle", "square", "triangle", "cross", "star")

# Shape extent (diameter of the circumscribed circle) at size 64, in pixels.
_MIN_ACROSS, _MAX_ACROSS = 14.0, 30.0
# Minimal RGB distance between the shape and the mean background beneath it.
_MIN_CONTRAST = 110.0
# cv2 sub-pixel drawing: coordinates carry this many fractional bits.
_SHIFT = 4


def _regular(count: int, radii: tuple[float, ...], phase: float = 0.0) -> np.ndarray:
    """Unit-circumradius polygon whose vertices cycle through ``radii``."""
    angles = phase + 2 * np.pi * np.arange(count) / count
    r = np.resize(np.asarray(radii), count)
    return np.stack([r * np.cos(angles), r * np.sin(angles)], axis=1)


def _cross() -> np.ndarray:
    """Plus sign with arms 0.6 wide, corners on the unit circle."""
    w = 0.3
    h = np.sqrt(1 - w * w)
    arm = np.array([[h, -w], [h, w], [w, w]])  # one arm's tip plus the inner corner after it
    quarter_turn = np.array([[0, -1], [1, 0]])
    return np.concatenate([arm @ np.linalg.matrix_power(quarter_turn, k).T for k in range(4)])


# Outlines in units of the circumradius, centred on the origin, in CLASSES order.
_OUTLINES = (
    _regular(48, (1.0,)),
    _regular(4, (1.0,), np.pi / 4),
    _regular(3, (1.0,), -np.pi / 2),
    _cross(),
    _regular(10, (1.0, 0.4), -np.pi / 2),
)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Float32 RGB clutter in roughly [0, 255]: colour field, stripes, lines."""
    smooth = cv2.resize(rng.uniform(40, 215, (2, 2, 3)).astype(np.float32), (size, size))
    blobs = cv2.resize(rng.uniform(-45, 45, (5, 5, 3)).astype(np.float32), (size, size))
    theta, period = rng.uniform(0, np.pi), rng.uniform(4, 14)
    coords = np.arange(size, dtype=np.float32) * np.float32(2 * np.pi / period)
    phase = np.add.outer(coords * np.float32(np.sin(theta)), coords * np.float32(np.cos(theta)))
    stripes = np.sin(phase)[..., None] * rng.uniform(-30, 30, 3).astype(np.float32)
    image = smooth + blobs + stripes
    # Thin lines give edges and corners that are not the object.
    for _ in range(rng.integers(2, 7)):
        p0, p1 = rng.uniform(-8, size + 8, (2, 2)) * (1 << _SHIFT)
        cv2.line(image, tuple(p0.astype(int)), tuple(p1.astype(int)),
                 rng.uniform(0, 255, 3).tolist(), int(rng.integers(1, 3)), cv2.LINE_AA, _SHIFT)
    return image


def _shape_mask(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one randomly placed, sized and rotated shape."""
    across = rng.uniform(_MIN_ACROSS, _MAX_ACROSS) * size / 64
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = _OUTLINES[label] @ rot.T * (across / 2)
    # Keep the whole shape (plus a 1 px margin) inside the image.
    low, high = 1 - points.min(axis=0), size - 2 - points.max(axis=0)
    points = points + rng.uniform(low, high)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(points * (1 << _SHIFT)).astype(np.int32)], 255,
                 cv2.LINE_AA, _SHIFT)
    return mask.astype(np.float32) / 255


def _shape_colour(rng: np.random.Generator, beneath: np.ndarray) -> np.ndarray:
    """First of 16 random colours far enough from ``beneath``, else the farthest."""
    candidates = rng.uniform(0, 255, (16, 3)).astype(np.float32)
    distance = np.linalg.norm(candidates - beneath, axis=1)
    far = np.flatnonzero(distance >= _MIN_CONTRAST)
    return candidates[far[0] if far.size else distance.argmax()]


def _sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, int, np.ndarray]:
    """One (image, label, box) triple."""
    label = int(rng.integers(len(CLASSES)))
    image = _background(rng, size)
    mask = _shape_mask(rng, label, size)
    colour = _shape_colour(rng, image[mask > 0.5].mean(axis=0))
    image += mask[..., None] * (colour - image)
    image += rng.standard_normal(image.shape, np.float32) * rng.uniform(3, 12)
    # Bounds of every pixel the shape touches, x1/y1 exclusive.
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.int32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label, box


def generate(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` images deterministically from ``seed``.

    Returns ``(images, labels, boxes)``: uint8 RGB ``[n, size, size, 3]``, int32
    indices into ``CLASSES`` ``[n]``, and int32 ``[n, 4]`` boxes ``(x0, y0, x1, y1)``
    bounding every pixel the shape touches, with ``x1`` and ``y1`` exclusive.
    """
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int32)
    boxes = np.empty((n, 4), np.int32)
    for i in range(n):
        images[i], labels[i], boxes[i] = _sample(np.random.default_rng((seed, i)), size)
    return images, labels, boxes


def write_samples(directory: Path, count: int = 6, seed: int = 7) -> list[Path]:
    """Write ``count`` PNGs ``sample_{k}_{class}.png`` cycling through every class."""
    directory.mkdir(parents=True, exist_ok=True)
    images, labels, _ = generate(20 * count, seed)
    unused = list(range(len(labels)))
    paths = []
    for k in range(count):
        i = next(j for j in unused if labels[j] == k % len(CLASSES))
        unused.remove(i)
        path = directory / f"sample_{k}_{CLASSES[labels[i]]}.png"
        cv2.imwrite(str(path), cv2.cvtColor(images[i], cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def write_set(directory: Path, count: int, seed: int) -> Path:
    """``count`` PNGs and ``boxes.csv`` (path,x0,y0,x1,y1,label: where each shape
    is), for `camserve evaluate --boxes`; returns the CSV's path."""
    directory.mkdir(parents=True, exist_ok=True)
    images, labels, boxes = generate(count, seed)
    table = directory / "boxes.csv"
    with open(table, "w") as f:
        f.write("path,x0,y0,x1,y1,label\n")
        for i, (image, label, box) in enumerate(zip(images, labels, boxes)):
            name = f"{i:04d}_{CLASSES[label]}.png"
            cv2.imwrite(str(directory / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            f.write(f"{name},{','.join(str(int(v)) for v in box)},{CLASSES[label]}\n")
    return table
