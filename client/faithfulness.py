"""How faithful a heatmap is, by the measures the CAM literature uses, computed
from a map and the model's probabilities on perturbed copies of the image. No
library computes these against a served model (pytorch-grad-cam's metrics run
a torch model in-process), so they are written here, each after its paper.

Everything works on the image at the model's input size (the canvas) and a map
of the same size in [0, 1]:

- deletion / insertion (Petsiuk et al., RISE, 2018): pixels are taken in the
  map's order, most salient first (ties in a fixed random order), in STEPS equal
  parts. Deletion sets them to black; insertion copies them onto a blurred copy
  of the image. The area under the explained class's probability over the
  fraction taken (trapezoids, 0..1): low for deletion and high for insertion
  mean the map found what the model uses.
- average drop and increase in confidence (Chattopadhyay et al., Grad-CAM++,
  2018): the model on the image multiplied by the map; drop is
  max(0, p - p_masked) / p, increase is p_masked > p.
- pointing game (Zhang et al., 2016; strict: no tolerance band): the map's
  maximum lies inside the object's box.
- localisation (Selvaraju et al., Grad-CAM, 2017): the box of boxes.largest_region
  at 0.15 of the maximum has IoU >= 0.5 with the object's box.

Two maps that know nothing of the model set the bar: `random` (uniform noise)
and `centre` (a Gaussian centred on the image, the photographer's prior).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from camserve.boxes import THRESHOLD, Box, largest_region

STEPS = 16
BASELINES = ("random", "centre")


def baseline_map(name: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    if name == "random":
        return rng.random((height, width), dtype=np.float32)
    if name == "centre":
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        sy, sx = height / 4, width / 4
        return np.exp(-(((y - (height - 1) / 2) / sy) ** 2 + ((x - (width - 1) / 2) / sx) ** 2) / 2)
    raise ValueError(f"unknown baseline map {name!r}")


def salience_order(heatmap: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat pixel indices, most salient first; equal values in a fixed random order
    (not raster order, which would delete a flat map's top rows first)."""
    tie_break = np.random.default_rng(seed).permutation(heatmap.size)
    return np.lexsort((tie_break, -heatmap.ravel()))


def blurred(image: np.ndarray) -> np.ndarray:
    """Insertion's starting image: the picture with its detail gone (RISE blurs
    with sigma 5 on 224-pixel images; the same fraction of the size here)."""
    sigma = max(1.0, 5.0 * max(image.shape[:2]) / 224)
    return cv2.GaussianBlur(image, (0, 0), sigma)


def perturbed(image: np.ndarray, heatmap: np.ndarray, steps: int = STEPS) -> list[np.ndarray]:
    """The deletion images (steps + 1, from the image to black), the insertion
    images (steps + 1, from the blurred image to the image), and the image times
    the map, in that order."""
    order = salience_order(heatmap)
    flat, start = image.reshape(-1, image.shape[-1]), blurred(image).reshape(-1, image.shape[-1])
    counts = np.round(np.linspace(0, 1, steps + 1) * heatmap.size).astype(int)
    deletion, insertion = [], []
    for count in counts:
        taken = order[:count]
        deleted = flat.copy()
        deleted[taken] = 0
        inserted = start.copy()
        inserted[taken] = flat[taken]
        deletion.append(deleted.reshape(image.shape))
        insertion.append(inserted.reshape(image.shape))
    masked = np.round(image * np.clip(heatmap, 0, 1)[..., None]).astype(np.uint8)
    return [*deletion, *insertion, masked]


def area_under(probabilities: np.ndarray) -> float:
    """Trapezoidal area under a curve sampled at equal fractions of 0..1."""
    p = np.asarray(probabilities, np.float64)
    return float((p[:-1] + p[1:]).sum() / (2 * (len(p) - 1)))


@dataclass
class Scores:
    """One map of one image."""

    deletion: np.ndarray  # the explained class's probability as pixels go, steps + 1
    insertion: np.ndarray
    drop: float
    increase: bool
    hit: bool | None  # None without a box
    localised: bool | None

    @property
    def deletion_auc(self) -> float:
        return area_under(self.deletion)

    @property
    def insertion_auc(self) -> float:
        return area_under(self.insertion)


def scores(heatmap: np.ndarray, probability: float, perturbed_probabilities, box: Box | None, steps: int = STEPS) -> Scores:
    """`perturbed_probabilities`: the class's probability on each of perturbed()'s images."""
    p = np.asarray(perturbed_probabilities, np.float64)
    masked = float(p[-1])
    hit = localised = None
    if box is not None:
        y, x = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
        hit = box.contains(x + 0.5, y + 0.5)
        found = largest_region(heatmap, THRESHOLD)
        localised = found is not None and found.iou(box) >= 0.5
    return Scores(
        deletion=p[: steps + 1],
        insertion=p[steps + 1 : 2 * steps + 2],
        drop=max(0.0, probability - masked) / probability if probability > 0 else 0.0,
        increase=masked > probability,
        hit=hit,
        localised=localised,
    )


def summary(all_scores: list[Scores]) -> dict:
    """Means over images (percentages for drop, increase, pointing, localisation)."""
    boxed = [s for s in all_scores if s.hit is not None]
    return {
        "images": len(all_scores),
        "deletion_auc": float(np.mean([s.deletion_auc for s in all_scores])),
        "insertion_auc": float(np.mean([s.insertion_auc for s in all_scores])),
        "average_drop_pct": 100 * float(np.mean([s.drop for s in all_scores])),
        "increase_in_confidence_pct": 100 * float(np.mean([s.increase for s in all_scores])),
        "pointing_game_pct": 100 * float(np.mean([s.hit for s in boxed])) if boxed else None,
        "localisation_pct": 100 * float(np.mean([s.localised for s in boxed])) if boxed else None,
        "deletion_curve": np.mean([s.deletion for s in all_scores], axis=0).tolist(),
        "insertion_curve": np.mean([s.insertion for s in all_scores], axis=0).tolist(),
    }
