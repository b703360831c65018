"""Which files a command works on when it is given files and folders, and where
their outputs go."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_files(paths: list[Path], skip: Path | None = None) -> list[Path]:
    """Files named as they are, and the images in folders named; each file once."""
    found: dict[str, Path] = {}
    for path in paths:
        for file in _images_in(path, skip) if path.is_dir() else [path]:
            found.setdefault(os.path.abspath(file), file)
    return list(found.values())


def _images_in(folder: Path, skip: Path | None) -> list[Path]:
    """Recursively, by extension, sorted; not hidden files or folders (such as
    macOS's ._IMG_0001.JPG), nor anything under `skip`: an output folder inside
    the input folder must not become input on the next run."""
    skipped = os.path.abspath(skip) if skip else None

    def wanted(path: Path) -> bool:
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        output = skipped is not None and os.path.commonpath([os.path.abspath(path), skipped]) == skipped
        return path.suffix.lower() in IMAGE_SUFFIXES and not hidden and not output and path.is_file()

    return sorted(filter(wanted, folder.rglob("*")))


def mirrored(inputs: list[Path], files: list[Path], out: Path) -> list[Path]:
    """Per file, where its outputs go, as a path to add a suffix to: the file's
    path below the folder the inputs share, mirrored under `out`, without its
    extension; so equal names in different folders do not collide. Files of one
    folder that share a stem (cat.jpg, cat.png) keep their extension (cat_jpg)."""
    base = os.path.commonpath([os.path.abspath(p if p.is_dir() else p.parent) for p in inputs])
    relative = [Path(os.path.relpath(os.path.abspath(f), base)) for f in files]
    stems = Counter((r.parent, r.stem) for r in relative)
    return [out / r.parent / (r.stem + (f"_{r.suffix[1:]}" if stems[r.parent, r.stem] > 1 else "")) for r in relative]
