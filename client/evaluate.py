"""Which CAM method to trust on your own images, measured through a running
server: for each method the model offers (and the random and centre baselines),
the faithfulness scores of faithfulness.py over a folder of images, with
optional object boxes. The explained class is each image's top-1; the
perturbed images go through the predict-only path in ExplainMany calls."""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from camserve.boxes import Box
from camserve.images import read_rgb
from camserve.overlay import blend
from camserve.progress import StatusLine, rate_and_eta

from . import faithfulness

CHUNK = 8  # images whose perturbations travel together
PER_CALL = 32  # perturbed images per ExplainMany call
GRID_IMAGES = 6


@dataclass
class Evaluation:
    model: str
    methods: list[str]  # served methods ("method@layer" for another layer or fusion), then the baselines
    scores: dict[str, list[faithfulness.Scores]] = field(default_factory=dict)
    grid: list[list[np.ndarray]] = field(default_factory=list)  # rows: an image, then its overlay per method
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def summary(self) -> dict[str, dict]:
        return {m: faithfulness.summary(self.scores[m]) for m in self.methods if self.scores.get(m)}


def read_boxes(path: Path) -> dict[str, Box]:
    """CSV with a header `path,x0,y0,x1,y1`: boxes in pixels of the upright image,
    end exclusive; paths as given on the command line's files, or relative to the
    CSV's folder."""
    boxes = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            file = Path(row["path"])
            file = file if file.is_absolute() else (path.parent / file)
            boxes[str(file.resolve())] = Box(*(int(float(row[k])) for k in ("x0", "y0", "x1", "y1")))
    return boxes


def _on_canvas(box: Box | None, original: tuple[int, int], size: tuple[int, int]) -> Box | None:
    """A box on the image, on the canvas the image was stretched to."""
    if box is None:
        return None
    sy, sx = size[0] / original[0], size[1] / original[1]
    return Box(math.floor(box.x0 * sx), math.floor(box.y0 * sy), math.ceil(box.x1 * sx), math.ceil(box.y1 * sy))


def evaluate(client, info, files: list[Path], boxes: dict[str, Box], methods: list[str], steps: int = faithfulness.STEPS, status: StatusLine | None = None) -> Evaluation:
    """`info`: the model's GetModel answer (its name and input size)."""
    model, size = info.name, (info.input_height, info.input_width)
    result = Evaluation(model, [*methods, *faithfulness.BASELINES])
    for name in result.methods:
        result.scores[name] = []
    started = time.monotonic()
    for first in range(0, len(files), CHUNK):
        _chunk(client, model, files[first : first + CHUNK], boxes, size, methods, steps, result)
        done = min(first + CHUNK, len(files))
        if status:
            status.update(f"evaluate: {done}/{len(files)} images, {len(result.methods)} maps each, {rate_and_eta(done, len(files), time.monotonic() - started)}")
    return result


def _chunk(client, model: str, files: list[Path], boxes: dict[str, Box], size, methods: list[str], steps: int, result: Evaluation):
    canvases, originals, kept = [], [], []
    for file in files:
        try:
            image = read_rgb(file)
        except (OSError, ValueError) as err:
            result.skipped.append((str(file), str(err)))
            continue
        canvases.append(cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA))
        originals.append(image.shape[:2])
        kept.append(file)
    if not canvases:
        return
    original = _answered(client.explain_many(canvases, per_call=CHUNK, model=model, heatmap_type="none", return_scores=True))
    classes = [r.class_index for r in original]  # top-1, which each method below explains too
    probability = [float(r.probabilities[c]) for r, c in zip(original, classes)]
    maps: dict[str, list] = {}
    for name in methods:
        method, _, layer = name.partition("@")
        explained = _answered(client.explain_many(canvases, per_call=CHUNK, model=model, method=method, layer=layer or None))
        maps[name] = [r.heatmap_at(size[1], size[0]) for r in explained]
    for name in faithfulness.BASELINES:
        maps[name] = [faithfulness.baseline_map(name, *size, np.random.default_rng(i)) for i in range(len(canvases))]

    jobs = [(name, i) for name in result.methods for i in range(len(canvases))]
    images = (image for name, i in jobs for image in faithfulness.perturbed(canvases[i], maps[name][i], steps))
    answers = _answered(client.explain_many(images, per_call=PER_CALL, model=model, heatmap_type="none", return_scores=True))
    per_job = 2 * steps + 3
    for j, (name, i) in enumerate(jobs):
        c = classes[i]
        p = [float(a.probabilities[c]) for a in answers[j * per_job : (j + 1) * per_job]]
        box = _on_canvas(boxes.get(str(Path(kept[i]).resolve())), originals[i], size)
        result.scores[name].append(faithfulness.scores(maps[name][i], probability[i], p, box, steps))
    for i in range(len(canvases)):
        if len(result.grid) < GRID_IMAGES:
            result.grid.append([canvases[i], *(blend(canvases[i], maps[name][i]) for name in result.methods)])


def _answered(results: list) -> list:
    """The results, if none failed: an image that decoded once decodes again, so a
    failure here is the server's, and the run stops with it."""
    failed = next((r for r in results if r.error), None)
    if failed:
        raise RuntimeError(f"{failed.error[0]}: {failed.error[1]}")
    return results


COLUMNS = (
    ("deletion_auc", "deletion AUC (lower better)", "{:.3f}"),
    ("insertion_auc", "insertion AUC (higher better)", "{:.3f}"),
    ("average_drop_pct", "average drop % (lower better)", "{:.1f}"),
    ("increase_in_confidence_pct", "increase in confidence %", "{:.1f}"),
    ("pointing_game_pct", "pointing game %", "{:.1f}"),
    ("localisation_pct", "localisation IoU>=0.5 %", "{:.1f}"),
)


def table(summary: dict[str, dict]) -> str:
    """A Markdown table, a row a method."""
    lines = ["| method | " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for method, s in summary.items():
        cells = ["" if s[key] is None else form.format(s[key]) for key, _, form in COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(path: Path, summary: dict[str, dict], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for method, s in summary.items():
        style = "--" if method in faithfulness.BASELINES else "-"
        for ax, key in zip(axes, ("deletion_curve", "insertion_curve")):
            fractions = np.linspace(0, 1, len(s[key]))
            area = s["deletion_auc" if key == "deletion_curve" else "insertion_auc"]
            ax.plot(fractions, s[key], style, label=f"{method} (AUC {area:.3f})")
    for ax, name in zip(axes, ("deletion: most salient pixels to black", "insertion: most salient pixels onto a blur")):
        ax.set_title(name)
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("probability of the explained class")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_grid(path: Path, evaluation: Evaluation, cell: int = 128):
    """Images down, methods across (the image itself first), with a title row."""
    titles = ["image", *evaluation.methods]
    header = np.full((22, cell * len(titles), 3), 255, np.uint8)
    for j, title in enumerate(titles):
        cv2.putText(header, title[:14], (j * cell + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    rows = [np.hstack([cv2.resize(tile, (cell, cell), interpolation=cv2.INTER_NEAREST) for tile in row]) for row in evaluation.grid]
    picture = np.vstack([header, *rows])
    cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
