"""A smart-stack scan folder: its positions, their image stacks and what their data.json files say.

Reading a scan touches only JPEG headers and small JSON files; nothing in the folder is changed.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
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
    """One x-y position: its folder, its images (in focus order, see `z_order`) and its data.json.

    A position of a flat scan (`ofm_tiling.sources`) shares the scan's folder with the others and
    is named by its `label` (its stage position) instead of its folder.
    """

    folder: Path
    images: list[ImageMetadata]
    data: dict | None = None
    damaged: list[tuple[Path, str]] = field(default_factory=list)
    label: str | None = None

    @property
    def name(self) -> str:
        return self.folder.name if self.label is None else self.label

    @property
    def where(self) -> Path:
        """The path that names this position in messages: its folder, or a flat position's first image."""
        return self.images[0].path if self.label is not None and self.images else self.folder


@dataclass
class FailedPosition:
    """A position folder without images, usually where a scan stopped.

    Attributes
    ----------
    folder : Path
    data : object
        Its data.json, parsed.
    report : str
        One line of everything the data.json says (`failure_summary`).
    details : list of str
        The whole data.json as readable lines (`describe_data`).
    """

    folder: Path
    data: Any
    report: str
    details: list[str] = field(default_factory=list)


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


def describe_data(data: Any, indent: str = "  ") -> list[str]:
    """Every key and value of a JSON document as readable lines, nested values indented.

    Nothing is left out and no key name is assumed: whatever a failed position's data.json says
    is what the user sees.
    """
    def lines(value: Any, depth: int) -> list[str]:
        pad = indent * depth
        if isinstance(value, dict):
            out = []
            for k, v in value.items():
                if isinstance(v, (dict, list)) and v:
                    out += [f"{pad}{k}:", *lines(v, depth + 1)]
                else:
                    out += [f"{pad}{k}: {_scalar(v)}"]
            return out or [f"{pad}{{}}"]
        if isinstance(value, list):
            out = []
            for v in value:
                if isinstance(v, (dict, list)) and v:
                    out += [f"{pad}-", *lines(v, depth + 1)]
                else:
                    out += [f"{pad}- {_scalar(v)}"]
            return out or [f"{pad}[]"]
        return [pad + line for line in _scalar(value).splitlines() or [""]]

    return lines(data, 0)


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return "{}" if isinstance(value, dict) else "[]"
    return json.dumps(value)


def failure_summary(data: Any) -> str:
    """One line of what a failed position's data.json says: every key, nested keys joined by dots."""
    def flat(value: Any, prefix: str) -> list[str]:
        if isinstance(value, dict) and value:
            return [p for k, v in value.items() for p in flat(v, f"{prefix}.{k}" if prefix else str(k))]
        if isinstance(value, list) and value:
            return [p for i, v in enumerate(value) for p in flat(v, f"{prefix}[{i}]")]
        text = " ".join(_scalar(value).split())
        return [f"{prefix}: {text}" if prefix else text]

    parts = [p for p in flat(data, "") if p.strip()]
    return "; ".join(parts) if parts else "no failure details in data.json"


def natural_key(name: str) -> list:
    """Sort key that orders numbers in names by value (``9`` before ``10``), not as text."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def z_order(images: list[ImageMetadata]) -> list[ImageMetadata]:
    """The planes of a stack in focus order: by stage z from their metadata, else by capture time,
    else by file name with numbers compared by value.

    A source is used only when every plane has it and it tells the planes apart.
    """
    for key in (lambda im: im.stage[2] if im.stage else None, lambda im: im.time):
        values = [key(im) for im in images]
        if all(v is not None for v in values) and len(set(values)) == len(values):
            return sorted(images, key=lambda im: (key(im), natural_key(im.path.name)))
    return sorted(images, key=lambda im: natural_key(im.path.name))


def own_outputs(skip: tuple[str | os.PathLike, ...]) -> Callable[[Path], bool]:
    """The rule for folders a scan's reader passes over: those named in `skip` (the run's own
    output and use folders) and any holding ofm-tiling's marker file (outputs of earlier runs)."""
    skip_set = {Path(p).resolve() for p in skip}
    return lambda folder: folder.resolve() in skip_set or (folder / MARKER).exists()


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
    is_own_output = own_outputs(skip)
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
        if is_own_output(folder):
            ignored.append((folder, OWN_OUTPUT))
            continue
        found = read_position(folder)
        if isinstance(found, Position):
            positions.append(found)
        elif found is not None:
            failed.append(found)
        else:
            ignored.append((folder, "no JPEG images and no data.json"))
    if not positions:
        if failed:
            raise OfmTilingError(root, f"no position folder holds images; {failed[0].folder.name}: {failed[0].report}")
        raise OfmTilingError(root, "no position folders with JPEG images "
                                   "(is this an OpenFlexure smart-stack scan folder?)")
    return Scan(root, data, positions, failed, ignored)


def read_position(folder: Path) -> Position | FailedPosition | None:
    """One position folder: its images (headers only) in focus order, a failed position (no images
    but a data.json), or None when it holds neither."""
    jpegs = sorted((p for p in folder.iterdir() if p.suffix.lower() in JPEG_SUFFIXES and p.is_file()),
                   key=lambda p: natural_key(p.name))
    folder_data, _ = _read_json(folder / "data.json")
    if not jpegs:
        if folder_data is None:
            return None
        return FailedPosition(folder, folder_data, failure_summary(folder_data), describe_data(folder_data))
    images, damaged = [], []
    for path in jpegs:
        try:
            images.append(read_metadata(path))
        except HeaderError as exc:
            damaged.append((path, str(exc)))
        except OSError as exc:
            damaged.append((path, f"cannot read ({exc.strerror})"))
    return Position(folder, z_order(images), folder_data if isinstance(folder_data, dict) else None, damaged)
