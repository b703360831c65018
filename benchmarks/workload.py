"""What the server benchmarks share: a model exported into a scratch repository,
and random images at its input size to send."""

from pathlib import Path

import numpy as np

from camserve.export.exporter import ExportOptions, export
from camserve.export.repository import read_metadata


def exported(source: str, repo: Path, name: str, weights: str = "none", input_size=None, layers=None) -> Path:
    return export(ExportOptions(source=source, repo=str(repo), name=name, weights=weights, input_size=input_size, layer=layers))


def random_images(version_dir: Path, count: int) -> list[np.ndarray]:
    """`count` random uint8 RGB images at the exported model's input size."""
    height, width = read_metadata(version_dir)["input_size"]
    return list(np.random.default_rng(0).integers(0, 256, (count, height, width, 3), dtype=np.uint8))
