"""What a folder given to collect or stitch holds, recognised and read (file headers only).

Three kinds (`KINDS`; ``Collection.kind`` says which was found), recognised in this order, first
match wins:

1. **tileconfig, given** — a ``layout`` file (a Fiji ``TileConfiguration.txt`` kept elsewhere)
   is given: its tile names are looked up relative to the folder.
2. **smart-stack** — a sub-folder holds JPEGs (one sub-folder per x-y position, see
   `ofm_tiling.scan`). JPEGs also lying directly in the folder are ignored, with a note.
3. **flat** — JPEGs lie directly in the folder (any names), carrying OFM metadata. Images at the
   same x-y stage position form one stack (a position), ordered in z like a smart-stack's.
   Images without a stage position are a position each (lay them out with ``grid``); JPEGs
   without OFM metadata beside a ``TileConfiguration.txt`` are a TileConfiguration folder.
4. **tileconfig** — the folder holds ``TileConfiguration.txt`` (2-D, tiles named in it,
   positions in pixels; any microscope, no metadata needed). Fiji's ``*.registered.txt`` files
   beside it are not the layout.

Folders ofm-tiling wrote (``use/``, output folders, anything holding its marker) and hidden files
are never looked at. A folder of none of these kinds is a one-line error saying what was looked for.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import OfmTilingError
from .metadata import HeaderError, ImageMetadata, read_metadata
from .scan import JPEG_SUFFIXES, Position, Scan, natural_key, own_outputs, read_scan, z_order
from .tileconfig import read_text, tile_entries
from .tilefiles import TileHeader, check_same_kind, is_tile_file, read_tile_header

__all__ = ["KINDS", "LAYOUT_FILE", "ListedTile", "TileList", "TileSource", "find_kind", "read_source"]

KINDS = ("smart-stack", "flat", "tileconfig")
LAYOUT_FILE = "TileConfiguration.txt"
_DESCRIPTION = {"smart-stack": "smart-stack scan", "flat": "flat OFM scan", "tileconfig": "TileConfiguration folder"}
NOT_A_SCAN = ("no position folders with JPEG images (smart-stack scan), no JPEGs with OFM metadata "
              f"(flat OFM scan) and no {LAYOUT_FILE} (Fiji tile folder) found")


@dataclass
class ListedTile:
    """One tile of a TileConfiguration: its file (header read), the line naming it, its position."""

    header: TileHeader
    name: str
    line: int
    xy: tuple[float, float]

    @property
    def path(self) -> Path:
        return self.header.path


@dataclass
class TileList:
    """Tiles laid out by a TileConfiguration file, in its order; all of one size and pixel type."""

    root: Path
    layout_file: Path
    tiles: list[ListedTile]

    @property
    def positions(self) -> np.ndarray:
        return np.array([t.xy for t in self.tiles], dtype=float).reshape(-1, 2)


@dataclass
class TileSource:
    """A folder's tiles, whichever kind it is: a `Scan` (smart-stack and flat) or a `TileList`.

    Attributes
    ----------
    kind : str
        One of `KINDS`.
    root : Path
    scan : Scan or None
        Smart-stack and flat scans: positions with their stacks.
    tiles : TileList or None
        TileConfiguration folders.
    notes : list of str
        What was passed over in recognising the kind.
    """

    kind: str
    root: Path
    scan: Scan | None = None
    tiles: TileList | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line: the kind and what it holds (``flat OFM scan, 36 images at 36 positions``)."""
        what = _DESCRIPTION[self.kind]
        if self.tiles is not None:
            first = self.tiles.tiles[0].header
            return (f"{what}, {len(self.tiles.tiles)} tiles in {self.tiles.layout_file.name} "
                    f"({first.pixel_type} {first.format})")
        assert self.scan is not None
        images = sum(len(p.images) for p in self.scan.positions)
        failed = f", {len(self.scan.failed)} without images" if self.scan.failed else ""
        return f"{what}, {images} images at {len(self.scan.positions)} positions{failed}"


# --- recognising ------------------------------------------------------------------------------

@dataclass
class _Contents:
    """What lies in a folder, as far as recognition needs: candidate sub-folders and top-level files."""

    jpeg_folders: list[Path]
    other_folders: list[Path]
    jpegs: list[Path]
    layout: Path | None


def _contents(root: Path, skip: tuple[str | os.PathLike, ...]) -> _Contents:
    if not root.exists():
        raise OfmTilingError(root, "scan folder not found")
    if not root.is_dir():
        raise OfmTilingError(root, "is not a folder (give the folder that holds the scan's images)")
    is_own_output = own_outputs(skip)
    found = _Contents([], [], [], None)
    try:
        entries = sorted(os.scandir(root), key=lambda e: natural_key(e.name))
        for entry in entries:
            path = Path(entry.path)
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if is_own_output(path):
                    continue
                has_jpegs = any(p.suffix.lower() in JPEG_SUFFIXES for p in path.iterdir())
                (found.jpeg_folders if has_jpegs else found.other_folders).append(path)
            elif entry.name == LAYOUT_FILE:
                found.layout = path
            elif path.suffix.lower() in JPEG_SUFFIXES:
                found.jpegs.append(path)
    except OSError as exc:
        raise OfmTilingError(exc.filename or root, f"cannot list folder ({exc.strerror})") from None
    return found


def _has_ofm_metadata(path: Path) -> bool:
    try:
        return read_metadata(path).layout not in ("none", "unknown")
    except (HeaderError, OSError):
        return False


def find_kind(root: str | os.PathLike, *, layout: str | os.PathLike | None = None,
              skip: tuple[str | os.PathLike, ...] = ()) -> str:
    """Which of `KINDS` the folder is (rules in the module docstring), reading names and JPEG headers.

    Raises
    ------
    OfmTilingError
        The folder is missing, or of none of the kinds.
    """
    return _kind_of(Path(root), _contents(Path(root), skip), layout)


def _kind_of(root: Path, found: _Contents, layout: str | os.PathLike | None) -> str:
    if layout is not None:
        return "tileconfig"
    if found.jpeg_folders:
        return "smart-stack"
    if found.jpegs and (found.layout is None or any(_has_ofm_metadata(p) for p in found.jpegs)):
        return "flat"
    if found.layout is not None:
        return "tileconfig"
    if any((p / "data.json").exists() for p in [root, *found.other_folders]):
        return "smart-stack"  # a scan that stopped before any image: read_scan says what its data.json says
    raise OfmTilingError(root, NOT_A_SCAN)


def read_source(root: str | os.PathLike, *, layout: str | os.PathLike | None = None,
                skip: tuple[str | os.PathLike, ...] = ()) -> TileSource:
    """Recognise the folder's kind and read it (headers only); ``summary`` says what was found.

    Parameters
    ----------
    root : path
        The folder: a smart-stack scan, a flat OFM scan or a folder of tiles with a
        ``TileConfiguration.txt``.
    layout : path, optional
        A TileConfiguration file kept elsewhere; its tile names are relative to `root`.
    skip : paths
        Folders to pass over (output folders), besides any holding the ofm-tiling marker.
    """
    root = Path(root)
    found = _contents(root, skip)
    kind = _kind_of(root, found, layout)
    if kind == "smart-stack":
        notes = [f"{p}: ignored (a JPEG directly in a smart-stack scan folder)" for p in found.jpegs]
        source = TileSource(kind, root, scan=read_scan(root, skip=skip), notes=notes)
    elif kind == "flat":
        notes = [f"{found.layout}: not used (the folder is a flat OFM scan; give it as layout to use it)"] \
            if found.layout is not None else []
        source = TileSource(kind, root, scan=read_flat(root, found.jpegs), notes=notes)
    else:
        layout_file = Path(layout) if layout is not None else found.layout
        assert layout_file is not None
        source = TileSource(kind, root, tiles=read_tile_list(root, layout_file))
    return source


# --- flat OFM scans ---------------------------------------------------------------------------

def read_flat(root: Path, jpegs: list[Path]) -> Scan:
    """A flat OFM scan as a `Scan`: images at one x-y stage position are one position's stack.

    Positions are named ``X_Y`` by their stage position (steps), as the OFM server names position
    folders; an image without a stage position is a position of its own, named by its file.
    Images whose header is damaged are left out, each with an ``ignored`` entry.
    """
    groups: dict[object, list[ImageMetadata]] = defaultdict(list)
    ignored: list[tuple[Path, str]] = []
    for path in jpegs:
        try:
            im = read_metadata(path)
        except HeaderError as exc:
            ignored.append((path, f"damaged JPEG, left out: {exc}"))
            continue
        except OSError as exc:
            ignored.append((path, f"cannot read ({exc.strerror}), left out"))
            continue
        groups[im.stage[:2] if im.stage is not None else path.name].append(im)
    if not groups:
        raise OfmTilingError(root, f"no readable JPEG image ({ignored[0][0].name}: {ignored[0][1]})")
    positions = [Position(root, z_order(images), label=_label(key)) for key, images in groups.items()]
    return Scan(root, None, positions, [], ignored)


def _label(key: object) -> str:
    if isinstance(key, tuple):
        return "_".join(f"{v:g}" for v in key)
    return str(key)


# --- TileConfiguration folders ----------------------------------------------------------------

def read_tile_list(root: Path, layout_file: Path) -> TileList:
    """The tiles a TileConfiguration names, looked up relative to `root`, headers read and checked.

    Raises
    ------
    OfmTilingError
        A missing or unreadable layout file, a line naming a missing, repeated or unsupported
        file, tiles of different sizes or pixel types, or no tiles at all.
    """
    entries = tile_entries(read_text(layout_file), source=layout_file)
    if not entries:
        raise OfmTilingError(layout_file, "names no tiles")
    tiles: list[ListedTile] = []
    seen: dict[Path, int] = {}
    for e in entries:
        path = root / e.name
        where = f"line {e.line} names {e.name}"
        if path.resolve() in seen:
            raise OfmTilingError(layout_file, f"{where}, already named on line {seen[path.resolve()]}")
        if not is_tile_file(path):
            raise OfmTilingError(layout_file, f"{where}: tiles must be .jpg, .jpeg, .png, .tif or .tiff files")
        if not path.is_file():
            raise OfmTilingError(layout_file, f"{where}, which is not in {root}")
        seen[path.resolve()] = e.line
        tiles.append(ListedTile(read_tile_header(path), e.name, e.line, (e.x, e.y)))
    check_same_kind([t.header for t in tiles])
    return TileList(root, layout_file, tiles)
