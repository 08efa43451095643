"""A smart-stack scan folder: its positions, their image stacks and what their data.json files say.

Reading a scan touches only JPEG headers and small JSON files; nothing in the folder is changed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OfmTilingError
from .files import MARKER
from .metadata import HeaderError, ImageMetadata, read_metadata

JPEG_SUFFIXES = {".jpg", ".jpeg"}
OWN_OUTPUT = "written by ofm-tiling"  # why a folder holding MARKER is passed over


@dataclass
class Position:
    """One x-y position: its folder, its images (sorted by name) and its data.json."""

    folder: Path
    images: list[ImageMetadata]
    data: dict | None = None
    damaged: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.folder.name


@dataclass
class FailedPosition:
    """A position folder without images, usually where a scan stopped; `report` explains why."""

    folder: Path
    data: Any
    report: str


@dataclass
class Scan:
    """A smart-stack scan folder as found on disk."""

    root: Path
    data: Any
    positions: list[Position]
    failed: list[FailedPosition]
    ignored: list[tuple[Path, str]]


def _read_json(path: Path) -> tuple[Any, str | None]:
    """Contents of a data.json, or (None, problem). These files are informative, never required."""
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace")), None
    except FileNotFoundError:
        return None, "no data.json"
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"data.json is not readable JSON ({exc})"


def failure_report(data: Any) -> str:
    """A short human-readable summary of what a failed position's data.json says."""
    if isinstance(data, dict):
        keys = ("status", "state", "error", "message", "reason", "exception", "detail", "details")
        parts = [f"{k}: {data[k]}" for k in keys if isinstance(data.get(k), (str, int, float)) and data.get(k) != ""]
        for k, v in data.items():
            if isinstance(v, dict):
                inner = failure_report(v)
                if inner and "no failure details" not in inner:
                    parts.append(f"{k}: {inner}")
        if parts:
            return "; ".join(parts)
    if isinstance(data, str) and data.strip():
        return data.strip().splitlines()[0]
    return "no failure details in data.json"


def read_scan(root: str | os.PathLike, *, skip: tuple[str | os.PathLike, ...] = ()) -> Scan:
    """Index a smart-stack scan folder, reading only JPEG headers.

    Parameters
    ----------
    root : path
        The scan folder (holding ``data.json`` and one sub-folder per position).
    skip : paths
        Folders to pass over (output folders), in addition to any holding the ofm-tiling marker.

    Raises
    ------
    OfmTilingError
        The folder does not exist, is not a folder, or holds no position with images.
    """
    root = Path(root)
    if not root.exists():
        raise OfmTilingError(root, "scan folder not found")
    if not root.is_dir():
        raise OfmTilingError(root, "is not a folder (give the scan folder that holds data.json)")
    skip_set = {Path(p).resolve() for p in skip}
    data, _ = _read_json(root / "data.json")
    positions: list[Position] = []
    failed: list[FailedPosition] = []
    ignored: list[tuple[Path, str]] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise OfmTilingError(root, f"cannot list folder ({exc.strerror})") from None
    for entry in entries:
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        folder = Path(entry.path)
        if folder.resolve() in skip_set or (folder / MARKER).exists():
            ignored.append((folder, OWN_OUTPUT))
            continue
        jpegs = sorted(p for p in folder.iterdir() if p.suffix.lower() in JPEG_SUFFIXES and p.is_file())
        folder_data, problem = _read_json(folder / "data.json")
        if not jpegs:
            if folder_data is not None:
                failed.append(FailedPosition(folder, folder_data, failure_report(folder_data)))
            else:
                ignored.append((folder, "no JPEG images and no data.json"))
            continue
        images, damaged = [], []
        for path in jpegs:
            try:
                images.append(read_metadata(path))
            except HeaderError as exc:
                damaged.append((path, str(exc)))
            except OSError as exc:
                damaged.append((path, f"cannot read ({exc.strerror})"))
        positions.append(Position(folder, images, folder_data if isinstance(folder_data, dict) else None, damaged))
    if not positions:
        if failed:
            raise OfmTilingError(root, f"no position folder holds images; {failed[0].folder.name}: {failed[0].report}")
        raise OfmTilingError(root, "no position folders with JPEG images (is this an OpenFlexure smart-stack scan folder?)")
    return Scan(root, data, positions, failed, ignored)
