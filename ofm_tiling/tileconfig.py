"""Fiji's TileConfiguration.txt: read and write tile names with top-left pixel positions."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import OfmTilingError
from .files import write_text_atomic

HEADER = "# Define the number of dimensions we are working on\ndim = 2\n\n# Define the image coordinates\n"


def format_tile_configuration(names: Sequence[str], positions: np.ndarray) -> str:
    """Text of a 2-D TileConfiguration: one ``name; ; (x, y)`` line per tile."""
    lines = [HEADER]
    for name, (x, y) in zip(names, np.asarray(positions, dtype=float)):
        if ";" in name or name.startswith("dim"):
            raise ValueError(f"tile name {name!r} cannot be written to a TileConfiguration")
        lines.append(f"{name}; ; ({x:.3f}, {y:.3f})\n")
    return "".join(lines)


def write_tile_configuration(path: str | os.PathLike, names: Sequence[str], positions: np.ndarray) -> None:
    """Write a TileConfiguration file (to a temporary name, then renamed into place)."""
    write_text_atomic(path, format_tile_configuration(names, positions))


class TileConfiguration(NamedTuple):
    """Tile names and their (N, 2) top-left (x, y) pixel positions."""

    names: list[str]
    positions: np.ndarray


class TileEntry(NamedTuple):
    """One tile line of a TileConfiguration: its line number, name and top-left (x, y)."""

    line: int
    name: str
    x: float
    y: float


def tile_entries(text: str, *, source: str | os.PathLike = "TileConfiguration") -> list[TileEntry]:
    """Every tile line of TileConfiguration text, with its line number (for messages).

    Accepts what Fiji writes: comments, ``dim = 2``, numbers in Java ``double`` form (``1.0E-4``,
    ``-0.0``, ``NaN``), an optional z coordinate (ignored).
    """
    entries: list[TileEntry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line.startswith("#") or len(line) <= 3 or line.replace(" ", "").startswith("dim="):
            continue
        parts = line.split(";")
        if len(parts) != 3:
            raise OfmTilingError(source, f"line {number} is not 'name; ; (x, y)': {line!r}")
        inner = parts[2].strip()
        if not (inner.startswith("(") and inner.endswith(")")):
            raise OfmTilingError(source, f"line {number} has no '(x, y)' position: {line!r}")
        try:
            values = [float(v) for v in inner[1:-1].split(",")]
        except ValueError:
            raise OfmTilingError(source, f"line {number} has a position that is not a number: {line!r}") from None
        if len(values) < 2:
            raise OfmTilingError(source, f"line {number} needs two coordinates: {line!r}")
        entries.append(TileEntry(number, parts[0].strip(), values[0], values[1]))
    return entries


def parse_tile_configuration(text: str, *, source: str | os.PathLike = "TileConfiguration") -> TileConfiguration:
    """Tile names and (x, y) positions from TileConfiguration text (rules as `tile_entries`)."""
    entries = tile_entries(text, source=source)
    return TileConfiguration([e.name for e in entries],
                             np.array([(e.x, e.y) for e in entries], dtype=float).reshape(-1, 2))


def read_text(path: str | os.PathLike) -> str:
    """The text of a TileConfiguration file (one-line errors for a missing or unreadable file)."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise OfmTilingError(path, "file not found") from None
    except OSError as exc:
        raise OfmTilingError(path, f"cannot read ({exc.strerror})") from None


def read_tile_configuration(path: str | os.PathLike) -> TileConfiguration:
    """Read a TileConfiguration file (see `parse_tile_configuration`)."""
    return parse_tile_configuration(read_text(path), source=path)
