"""The versioned model repository: DIR/NAME/VERSION/ holds a SavedModel with
its metadata in assets.extra/camserve.json."""

from __future__ import annotations

import json
from pathlib import Path

METADATA = Path("assets.extra") / "camserve.json"


def versions(repo, name: str) -> list[int]:
    """The published versions of a model, oldest first (unfinished exports are hidden)."""
    return versions_in(Path(repo) / name)


def versions_in(folder) -> list[int]:
    """The published versions in one model's folder (TF Serving's base path), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(repo, name: str) -> int:
    return max(versions(repo, name), default=0) + 1


def version_dir(repo, name: str, version: int) -> Path:
    return Path(repo) / name / str(version)


def staging_dir(repo, name: str, version: int) -> Path:
    """Where an export is written before it is published by one rename, so a
    server watching the repository never sees half a version."""
    return Path(repo) / name / f".staging-{version}"


def write_metadata(saved_model_dir, metadata: dict):
    path = Path(saved_model_dir) / METADATA
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2) + "\n")


def read_metadata(saved_model_dir) -> dict:
    return json.loads((Path(saved_model_dir) / METADATA).read_text())
