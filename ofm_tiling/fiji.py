"""Fiji backend: Fiji's "Grid/Collection stitching" plugin run on a collected scan (``SCAN/use``).

The plugin is driven through its macro options (one string of ``key=[value]`` pairs and bare flags).
ImageJ reads that string with rules that make mistakes silent, so everything here is explicit:

* every key the plugin reads is always passed: a key left out inherits the value of the previous
  run in the same Java VM;
* checkboxes are bare flags, and an absent flag is FALSE even where the dialog's default is true;
* ``directory=`` comes before ``output_directory=`` (ImageJ finds ``directory=`` inside
  ``output_directory=``);
* choice values are the plugin's exact strings, trailing padding included (headless, a choice that
  matches nothing silently becomes the first one);
* values are bracketed, so a path holding ``[`` or ``]`` cannot be passed: `run_fiji` reaches such a
  folder through a bracket-free symbolic link, `grid_collection_options` refuses it.

Fiji is started either in this Python process with pyimagej (needs two jars a plain Fiji does not
ship, see `missing_pyimagej_jars`) or, failing that, as a headless subprocess through the Fiji
launcher with the same generated macro. Its fused output (one 8-bit TIFF per colour channel) is
merged back into RGB bands for `ofm_tiling.writers.write_ome_tiff`.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import OfmTilingError
from .tileconfig import read_tile_configuration

log = logging.getLogger("ofm_tiling")

__all__ = [
    "GridSpec", "RegisteredLayout", "FijiResult", "grid_collection_options", "infer_grid",
    "tile_name_pattern", "stitching_macro", "macro_for_scan", "find_fiji", "fiji_launcher",
    "missing_pyimagej_jars", "run_fiji", "read_registered", "merge_channels", "install_macro",
    "macro_path", "macro_string", "default_heap_mb",
]

STITCHING_COMMAND = "Grid/Collection stitching"

# The plugin's choice strings, exactly (fiji/Stitching GridType, CommonFunctions). The first order of
# each family is padded with spaces to 28 characters in the plugin, and the padding is part of it.
POSITIONS_TYPE = "Positions from file"
POSITIONS_ORDER = "Defined by TileConfiguration"
GRID_TYPES = ("Grid: row-by-row", "Grid: column-by-column", "Grid: snake by rows", "Grid: snake by columns")
ROW_ORDERS = ("Right & Down".ljust(28), "Left & Down", "Right & Up", "Left & Up")
COLUMN_ORDERS = ("Down & Right".ljust(28), "Down & Left", "Up & Right", "Up & Left")
FUSION_METHODS = ("Linear Blending", "Average", "Median", "Max. Intensity", "Min. Intensity",
                  "Intensity of random input tile", "Do not fuse images (only write TileConfiguration)")
SAVE_MEMORY = "Save memory (but be slower)"
SAVE_TIME = "Save computation time (but use more RAM)"
FUSE_AND_DISPLAY = "Fuse and display"
WRITE_TO_DISK = "Write to disk"

#: What "Write to disk" produces: one 8-bit TIFF per channel, without a file extension.
CHANNEL_FILES = ("img_t1_z1_c1", "img_t1_z1_c2", "img_t1_z1_c3")
LAYOUT_FILE = "TileConfiguration.txt"
#: Grid types write their own initial TileConfiguration into the tile folder: never over ours.
GRID_TEXTFILE = "TileConfiguration.grid.txt"

#: The collect-and-stitch macro shipped in ``macros/`` and where `install_macro` puts it in Fiji.
MACRO_FILE = "OpenFlexure_Collect_and_Stitch.ijm"
INSTALLED_MACRO = Path("scripts", "Plugins", "OpenFlexure", "Collect_and_Stitch.ijm")

#: Jars pyimagej needs on top of a plain Fiji.app to start offline (Maven artifact ids).
PYIMAGEJ_JARS = ("imglib2-imglyb", "imglib2-unsafe")

USUAL_FIJI_PLACES = ("~/Fiji.app", "~/Fiji", "~/fiji-linux64/Fiji.app", "~/fiji-win64/Fiji.app",
                     "~/Downloads/Fiji.app", "~/Applications/Fiji.app", "/Applications/Fiji.app",
                     "/opt/Fiji.app", "/opt/fiji/Fiji.app", "/usr/local/Fiji.app", "C:/Fiji.app",
                     "%LOCALAPPDATA%/Fiji.app", "%PROGRAMFILES%/Fiji.app")

# Old ImageJ launcher names first where they are a real binary; Jaunch (Fiji since 2025) second.
_LAUNCHERS = {
    "linux": ("ImageJ-linux64", "fiji-linux-x64", "fiji-linux-arm64", "fiji", "ImageJ-linux32"),
    "win32": ("ImageJ-win64.exe", "fiji-windows-x64.exe", "fiji-windows-arm64.exe", "fiji.bat",
              "ImageJ-win32.exe"),
    "darwin": ("Contents/MacOS/ImageJ-macosx", "Contents/MacOS/fiji-macos-arm64",
               "Contents/MacOS/fiji-macos-x64", "Contents/MacOS/fiji-macos-universal", "fiji"),
}


# --------------------------------------------------------------------------------------------
# Option strings


@dataclass(frozen=True)
class GridSpec:
    """A complete rectangular scan in one of the acquisition orders Fiji's Grid types know.

    Attributes
    ----------
    cols, rows : int
        Grid size (Fiji's ``grid_size_x`` and ``grid_size_y``).
    grid_type : str
        Fiji's type, one of `GRID_TYPES` (e.g. ``"Grid: snake by rows"``).
    order : str
        Fiji's order for that type, exact and padded (e.g. ``"Right & Down" + 16 spaces``): where
        the first tile is and which way the scan moves first.
    overlap_x_percent, overlap_y_percent : float or None
        Overlap between neighbours from the stage positions (None along an axis with one tile).
    cells : tuple of (int, int)
        (column, row) of every tile in acquisition order; row 0 is the top, column 0 the left.
    """

    cols: int
    rows: int
    grid_type: str
    order: str
    overlap_x_percent: float | None
    overlap_y_percent: float | None
    cells: tuple[tuple[int, int], ...] = ()

    @property
    def overlap_percent(self) -> float:
        """The one overlap Fiji's grid dialog takes: the mean of the measured ones."""
        values = [v for v in (self.overlap_x_percent, self.overlap_y_percent) if v is not None]
        return float(np.mean(values))

    @property
    def snake(self) -> bool:
        return "snake" in self.grid_type

    def describe(self) -> str:
        """One line for people, e.g. ``4 x 3 tiles, Grid: snake by rows, Right & Down, 30% overlap``."""
        return (f"{self.cols} x {self.rows} tiles, {self.grid_type}, {self.order.strip()}, "
                f"{self.overlap_percent:.0f}% overlap")


def _path_value(path: str | os.PathLike, what: str) -> str:
    """A path as Fiji should get it: forward slashes, and nothing the option parser misreads."""
    text = Path(path).as_posix() if isinstance(path, os.PathLike) else str(path).replace("\\", "/")
    return _plain_value(text, what, path)


def _plain_value(text: str, what: str, path: str | os.PathLike | None = None) -> str:
    # ImageJ ends a [value] at its matching ']' (older versions: at the first one): a bracket inside
    # would cut the value short and spill the rest into other keys.
    if "[" in text or "]" in text:
        raise OfmTilingError(path, f"Fiji's option parser cannot take a {what} containing '[' or ']': "
                                   "rename it (or let run_fiji reach it through a link)")
    if text != text.strip() or not text:
        raise OfmTilingError(path, f"Fiji trims the {what}, so it cannot be empty or start or end with a space")
    if "\n" in text or "\r" in text:
        raise OfmTilingError(path, f"the {what} contains a line break")
    return text


def _number(value: float, what: str) -> str:
    value = float(value)
    if not math.isfinite(value):
        raise OfmTilingError(None, f"Fiji option {what} must be a finite number, not {value}")
    # Two decimals as the dialog shows them, unless that would lose precision.
    text = f"{value:.2f}"
    return text if float(text) == value else repr(value)


def grid_collection_options(
    directory: str | os.PathLike,
    *,
    layout: str = "positions",
    layout_file: str = LAYOUT_FILE,
    file_pattern: str | None = None,
    grid: GridSpec | tuple[int, int] | None = None,
    order: str | None = None,
    overlap_percent: float | None = None,
    first_index: int = 0,
    fusion: str = "Linear Blending",
    regression_threshold: float = 0.30,
    max_avg_displacement: float = 2.50,
    absolute_displacement: float = 3.50,
    compute_overlap: bool = True,
    subpixel: bool = True,
    output_directory: str | os.PathLike | None = None,
    output_textfile_name: str | None = None,
    save_memory: bool = False,
) -> str:
    """The macro option string of Fiji's "Grid/Collection stitching" for one tile folder.

    Every key the plugin reads for the chosen type is given (keys left out would inherit the
    previous run's values); flags that should be false are left out (an absent flag is false).

    Parameters
    ----------
    directory : path
        Folder holding the tiles (``SCAN/use``). Also where Fiji writes the registered layout.
    layout : {"positions", "grid"}
        ``"positions"``: type ``Positions from file``, order ``Defined by TileConfiguration``, the
        positions read from `layout_file`. ``"grid"``: one of Fiji's Grid types, which needs a
        complete rectangular scan (`grid`) and numbered file names (`file_pattern`).
    layout_file : str
        TileConfiguration file name, relative to `directory` (positions layout).
    file_pattern : str, optional
        Grid layout: tile file names with ``{i}``, ``{ii}``, ``{iii}``... standing for the index,
        zero-padded to at least that many digits (default ``"{ii}.jpeg"``).
    grid : GridSpec or (int, int), optional
        Grid layout: a `GridSpec` from `infer_grid`, or (columns, rows) of a scan taken row by row.
    order : {"raster", "snake"}, optional
        Grid layout with `grid` given as (columns, rows): row-by-row or snake by rows, starting at
        the top left and moving right (default raster). Ignored with a `GridSpec`.
    overlap_percent : float, optional
        Grid layout: overlap between neighbours in percent (default: the `GridSpec`'s).
    first_index : int
        Grid layout: index of the first tile in the file names.
    fusion : str
        One of `FUSION_METHODS`.
    regression_threshold, max_avg_displacement, absolute_displacement : float
        The plugin's link acceptance thresholds.
    compute_overlap, subpixel : bool
        Register the tiles (otherwise just place them), with subpixel accuracy.
    output_directory : path, optional
        Write the fused channels there (``Write to disk``); None: ``Fuse and display``.
    output_textfile_name : str, optional
        Grid layout: where Fiji writes its initial layout inside `directory` (default
        ``TileConfiguration.grid.txt``). Refused if it is `layout_file`, which it would overwrite.
    save_memory : bool
        ``Save memory (but be slower)`` instead of ``Save computation time``.

    Returns
    -------
    str
        ``type=[...] order=[...] ... image_output=[...] [output_directory=[...]]``.

    Raises
    ------
    OfmTilingError
        A value Fiji would misread (brackets in a path, unknown fusion method, bad grid...).
    """
    if fusion not in FUSION_METHODS:
        raise OfmTilingError(None, f"unknown Fiji fusion method {fusion!r}; choose one of {', '.join(FUSION_METHODS)}")
    folder = _path_value(directory, "tile folder path")
    parts: list[str] = []
    if layout == "positions":
        parts += [f"type=[{POSITIONS_TYPE}]", f"order=[{POSITIONS_ORDER}]", f"directory=[{folder}]",
                  f"layout_file=[{_plain_value(layout_file, 'layout file name')}]"]
    elif layout == "grid":
        if grid is None:
            raise OfmTilingError(directory, "the Fiji grid layout needs the grid size (columns x rows)")
        if isinstance(grid, GridSpec):
            cols, rows, grid_type, grid_order = grid.cols, grid.rows, grid.grid_type, grid.order
            if overlap_percent is None:
                overlap_percent = grid.overlap_percent
        else:
            cols, rows = (int(v) for v in grid)
            kind = order or "raster"
            if kind not in ("raster", "snake"):
                raise OfmTilingError(None, f"grid order must be 'raster' or 'snake', not {kind!r}")
            grid_type = GRID_TYPES[0] if kind == "raster" else GRID_TYPES[2]
            grid_order = ROW_ORDERS[0]
        if cols < 1 or rows < 1 or cols * rows < 2:
            raise OfmTilingError(directory, f"a {cols} x {rows} grid has fewer than the 2 tiles Fiji needs")
        if overlap_percent is None:
            raise OfmTilingError(directory, "the Fiji grid layout needs the tile overlap in percent")
        if not 0 <= float(overlap_percent) < 100:
            raise OfmTilingError(directory, f"tile overlap must be between 0 and 100 %, not {overlap_percent}")
        pattern = _plain_value(file_pattern or "{ii}.jpeg", "file name pattern")
        if "{i" not in pattern or "i}" not in pattern:
            # Without {i...} every grid cell gets the same file: Fiji repeats the first tile.
            raise OfmTilingError(None, f"file name pattern {pattern!r} has no {{i}}/{{ii}}/{{iii}} index")
        textfile = _plain_value(output_textfile_name or GRID_TEXTFILE, "output text file name")
        if textfile == layout_file:
            raise OfmTilingError(Path(directory) / textfile,
                                 "a Fiji grid run writes its own layout there, which would overwrite the stage positions")
        parts += [f"type=[{grid_type}]", f"order=[{grid_order}]", f"grid_size_x={cols}", f"grid_size_y={rows}",
                  f"tile_overlap={_number(overlap_percent, 'tile_overlap')}",
                  f"first_file_index_i={int(first_index)}", f"directory=[{folder}]", f"file_names=[{pattern}]",
                  f"output_textfile_name=[{textfile}]"]
    else:
        raise OfmTilingError(None, f"Fiji layout must be 'positions' or 'grid', not {layout!r}")
    parts += [f"fusion_method=[{fusion}]",
              f"regression_threshold={_number(regression_threshold, 'regression_threshold')}",
              f"max/avg_displacement_threshold={_number(max_avg_displacement, 'max/avg_displacement_threshold')}",
              f"absolute_displacement_threshold={_number(absolute_displacement, 'absolute_displacement_threshold')}"]
    # Flags: present = true. add_tiles_as_rois, invert_x/y, ignore_z_stage, downsample_tiles and
    # use_virtual_input_images stay absent = false (the first and downsample break headless runs).
    if compute_overlap:
        parts.append("compute_overlap")
    if subpixel:
        parts.append("subpixel_accuracy")
    parts.append(f"computation_parameters=[{SAVE_MEMORY if save_memory else SAVE_TIME}]")
    if output_directory is None:
        parts.append(f"image_output=[{FUSE_AND_DISPLAY}]")
    else:
        # Last, after directory=, which ImageJ would otherwise find inside output_directory=.
        parts += [f"image_output=[{WRITE_TO_DISK}]",
                  f"output_directory=[{_path_value(output_directory, 'output folder path')}]"]
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Grids


def _cluster(values: np.ndarray, tile_length: float) -> tuple[np.ndarray, np.ndarray]:
    """Group 1-D stage coordinates into grid lines: labels (0 = smallest) and line centres."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    gaps = np.diff(ordered)
    if gaps.size == 0:
        return np.zeros(len(values), dtype=int), ordered.copy()
    # Steps between lines are the large gaps; stage jitter (tens of px) the small ones.
    threshold = max(0.5 * float(gaps.max()), 0.15 * tile_length)
    sorted_labels = np.concatenate([[0], np.cumsum(gaps > threshold)])
    labels = np.empty(len(values), dtype=int)
    labels[order] = sorted_labels
    centres = np.array([ordered[sorted_labels == k].mean() for k in range(sorted_labels[-1] + 1)])
    return labels, centres


def _fiji_cells(type_index: int, order_index: int, cols: int, rows: int) -> list[tuple[int, int]]:
    """(column, row) of each index for one of Fiji's grid types and orders, as the plugin walks it."""
    xs = list(range(cols)) if order_index in (0, 2) else list(range(cols - 1, -1, -1))
    ys = list(range(rows)) if order_index in (0, 1) else list(range(rows - 1, -1, -1))
    snake = type_index in (2, 3)
    cells = []
    if type_index in (0, 2):  # by rows
        for k, y in enumerate(ys):
            line = xs[::-1] if snake and k % 2 else xs
            cells += [(x, y) for x in line]
    else:  # by columns
        for k, x in enumerate(xs):
            line = ys[::-1] if snake and k % 2 else ys
            cells += [(x, y) for y in line]
    return cells


def infer_grid(positions: np.ndarray | Sequence[Sequence[float]], tile_shape: tuple[int, int]) -> GridSpec:
    """Recognise a complete rectangular scan and the order it was taken in.

    Parameters
    ----------
    positions : (N, 2) array
        Stage-derived top-left (x, y) pixel positions in acquisition order (y down).
    tile_shape : (int, int)
        Tile (height, width) in pixels.

    Returns
    -------
    GridSpec
        Columns, rows, Fiji's grid type and order, overlap in percent.

    Raises
    ------
    OfmTilingError
        Fewer than 2 tiles, unevenly spaced lines, missing or doubled grid cells, tiles that do not
        overlap, or an acquisition order that is not one of Fiji's (the message says which).
    """
    pos = np.asarray(positions, dtype=float).reshape(-1, 2)
    h, w = (float(v) for v in tile_shape)
    n = len(pos)
    if n < 2:
        raise OfmTilingError(None, f"a Fiji grid needs at least 2 tiles, the scan has {n}")
    if not np.isfinite(pos).all():
        raise OfmTilingError(None, "some stage positions are unknown: not a regular grid")
    col, xs = _cluster(pos[:, 0], w)
    row, ys = _cluster(pos[:, 1], h)
    cols, rows = len(xs), len(ys)
    for name, centres in (("columns", xs), ("rows", ys)):
        steps = np.diff(centres)
        if steps.size > 1 and steps.max() - steps.min() > 0.2 * steps.mean():
            raise OfmTilingError(None, f"the {name} are not evenly spaced (steps of {steps.min():.0f} to "
                                       f"{steps.max():.0f} px): not a regular grid")
    cells = list(zip(col.tolist(), row.tolist()))
    seen: dict[tuple[int, int], int] = {}
    for i, cell in enumerate(cells):
        if cell in seen:
            raise OfmTilingError(None, f"tiles {seen[cell]} and {i} were taken at the same grid position "
                                       f"(column {cell[0] + 1}, row {cell[1] + 1}): not a regular grid")
        seen[cell] = i
    if len(seen) != cols * rows:
        missing = [(c, r) for r in range(rows) for c in range(cols) if (c, r) not in seen]
        c, r = missing[0]
        raise OfmTilingError(None, f"the scan is not a complete rectangular grid: {n} tiles on a {cols} x {rows} "
                                   f"grid, {len(missing)} position(s) missing (first: column {c + 1}, row {r + 1})")
    overlap_x = 100.0 * (1.0 - float(np.diff(xs).mean()) / w) if cols > 1 else None
    overlap_y = 100.0 * (1.0 - float(np.diff(ys).mean()) / h) if rows > 1 else None
    for axis, value in (("x", overlap_x), ("y", overlap_y)):
        if value is not None and value < 0:
            raise OfmTilingError(None, f"neighbouring tiles do not overlap in {axis} ({value:.0f}%): "
                                       "Fiji cannot stitch them")
    for type_index, grid_type in enumerate(GRID_TYPES):
        orders = ROW_ORDERS if type_index in (0, 2) else COLUMN_ORDERS
        for order_index, order in enumerate(orders):
            if _fiji_cells(type_index, order_index, cols, rows) == cells:
                return GridSpec(cols, rows, grid_type, order, overlap_x, overlap_y, tuple(cells))
    raise OfmTilingError(None, f"the tiles fill a {cols} x {rows} grid but were not taken row by row, column by "
                               "column or as a snake from a corner, so Fiji's grid types cannot number them "
                               "(use the positions layout)")


def tile_name_pattern(names: Sequence[str]) -> tuple[str, int]:
    """Fiji's file-name pattern for tiles numbered in acquisition order (``00.jpeg`` -> ``{ii}.jpeg``).

    Returns
    -------
    (str, int)
        The pattern and the first index.

    Raises
    ------
    OfmTilingError
        Names that are not consecutive zero-padded numbers with one extension.
    """
    if not names:
        raise OfmTilingError(None, "no tiles")
    stem, dot, ext = names[0].partition(".")
    if not stem.isdigit():
        raise OfmTilingError(names[0], "tile names must be numbers (00.jpeg, 01.jpeg...) for Fiji's grid layout")
    width, first = len(stem), int(stem)
    # Fiji pads to at least the width and never truncates, so wider later names still match.
    pattern = "{" + "i" * width + "}" + dot + ext
    for k, name in enumerate(names):
        expected = f"{first + k:0{width}d}{dot}{ext}"
        if name != expected:
            raise OfmTilingError(name, f"Fiji's grid layout would look for {expected} here: tiles must be "
                                       "numbered consecutively in acquisition order")
    return pattern, first


# --------------------------------------------------------------------------------------------
# Macros


def macro_string(text: str) -> str:
    """An IJ1 macro expression for `text`, in plain ASCII whatever the file encoding Fiji assumes.

    Quotes and backslashes are escaped; other characters outside printable ASCII become
    ``fromCharCode(...)`` pieces (ImageJ 1 has no ``\\u`` escape).
    """
    pieces: list[str] = []
    literal: list[str] = []
    for ch in text:
        if ch in ('"', "\\"):
            literal.append("\\" + ch)
        elif " " <= ch <= "~":
            literal.append(ch)
        else:
            if literal or not pieces:
                pieces.append('"' + "".join(literal) + '"')
                literal = []
            units = ch.encode("utf-16-be")
            codes = [str(int.from_bytes(units[i:i + 2], "big")) for i in range(0, len(units), 2)]
            pieces.append(f"fromCharCode({', '.join(codes)})")
    if literal or not pieces:
        pieces.append('"' + "".join(literal) + '"')
    return " + ".join(pieces)


def stitching_macro(use_dir: str | os.PathLike, output_dir: str | os.PathLike | None, **options) -> str:
    """The IJ1 macro the Fiji backend runs: Grid/Collection stitching of `use_dir`.

    Parameters
    ----------
    use_dir : path
        The tile folder (``SCAN/use``).
    output_dir : path or None
        Where Fiji writes the fused channels (``img_t1_z1_c1``...); None: fuse and display.
    **options
        Passed to `grid_collection_options`.

    Returns
    -------
    str
        Macro text, plain ASCII. It prints ``ofm-tiling: done`` when Fiji wrote the fused image, or
        a line starting ``ofm-tiling: ERROR`` when it did not.
    """
    opts = grid_collection_options(use_dir, output_directory=output_dir, **options)
    lines = [
        "// Generated by ofm-tiling: Fiji's Grid/Collection stitching of one collected OpenFlexure scan.",
        "// Every option is given on purpose: absent flags mean false and absent keys reuse the last run's values.",
        "setBatchMode(true);",
        f"run({macro_string(STITCHING_COMMAND)}, {macro_string(opts)});",
    ]
    if output_dir is not None:
        fused = _path_value(output_dir, "output folder path").rstrip("/") + "/" + CHANNEL_FILES[0]
        lines += [f"if (File.exists({macro_string(fused)})) print(\"ofm-tiling: done\");",
                  "else print(\"ofm-tiling: ERROR: Fiji wrote no fused image (see the messages above)\");"]
    else:
        lines += ["if (nImages > 0) print(\"ofm-tiling: done\");",
                  "else print(\"ofm-tiling: ERROR: Fiji produced no fused image (see the messages above)\");"]
    return "\n".join(lines) + "\n"


def macro_path() -> Path:
    """The collect-and-stitch macro file (``macros/OpenFlexure_Collect_and_Stitch.ijm``).

    Looked for inside the installed package first (``ofm_tiling/macros/``), then in the source tree.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "macros" / MACRO_FILE, here.parent / "macros" / MACRO_FILE):
        if candidate.is_file():
            return candidate
    raise OfmTilingError(here / "macros" / MACRO_FILE, "the Fiji macro is missing from this installation")


def _macro_settings(text: str, settings: Mapping[str, str]) -> str:
    """The macro with its ``args = getArgument();`` line replaced by fixed settings."""
    marker = "args = getArgument();"
    if marker not in text:
        raise OfmTilingError(macro_path(), f"the macro has no '{marker}' line to fill in")
    value = " ".join(f"{key}=[{_plain_value(str(v), key)}]" for key, v in settings.items())
    return text.replace(marker, f"args = {macro_string(value)}; // filled in by ofm-tiling fiji-macro", 1)


def macro_for_scan(scan: str | os.PathLike, *, use: str | os.PathLike | None = None,
                   out: str | os.PathLike | None = None, layout: str = "positions", select: str = "tag",
                   grid: tuple[int, int] | None = None, overlap: float | None = None,
                   command: str = "ofm-tiling") -> str:
    """The collect-and-stitch macro (`macro_path`) set up for one scan, ready to run in Fiji.

    It runs ``ofm-tiling collect`` with the same collect options, stitches ``use/`` with the same
    Grid/Collection options as the Fiji backend (positions from file), and saves the fused image
    as ``mosaic.tif`` (and ``mosaic.jpg``) in `out` (default ``SCAN/stitched-fiji``).

    Raises
    ------
    OfmTilingError
        ``layout="grid"``: the macro always uses the stage positions (the grid needs the collected
        positions to be worked out; use ``ofm-tiling stitch --backend fiji --fiji-layout grid``).
    """
    if layout != "positions":
        raise OfmTilingError(scan, "the printed macro stitches with positions from file only; for Fiji's grid "
                                   "layout run 'ofm-tiling stitch --backend fiji --fiji-layout grid'")
    scan_path = Path(scan).resolve()
    settings = {"scan": scan_path.as_posix(), "command": command, "select": select}
    if use is not None:
        settings["use"] = Path(use).resolve().as_posix()
    settings["out"] = Path(out).resolve().as_posix() if out is not None else (scan_path / "stitched-fiji").as_posix()
    if grid is not None:
        settings["grid"] = f"{int(grid[0])}x{int(grid[1])}"
    if overlap is not None:
        settings["overlap"] = repr(float(overlap))
    return _macro_settings(macro_path().read_text(encoding="utf-8"), settings)


def install_macro(fiji: str | os.PathLike | None = None) -> Path:
    """Copy the collect-and-stitch macro into Fiji's Plugins menu (Plugins > OpenFlexure).

    Returns
    -------
    Path
        ``Fiji.app/scripts/Plugins/OpenFlexure/Collect_and_Stitch.ijm``.
    """
    root = find_fiji(fiji)
    target = root / INSTALLED_MACRO
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(macro_path(), target)
    except OSError as exc:
        raise OfmTilingError(target, f"cannot install the macro ({exc.strerror or exc})") from None
    return target


# --------------------------------------------------------------------------------------------
# Finding Fiji


def fiji_launcher(fiji: str | os.PathLike) -> Path | None:
    """The Fiji launcher executable inside a Fiji.app folder for this platform, or None."""
    root = Path(fiji)
    platform = "win32" if sys.platform.startswith("win") else "darwin" if sys.platform == "darwin" else "linux"
    for name in _LAUNCHERS[platform]:
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None


def _stitching_jar(root: Path) -> Path | None:
    for folder in (root / "plugins", root / "jars"):
        for jar in sorted(folder.glob("Stitching_*.jar")) if folder.is_dir() else ():
            return jar
    return None


def _fiji_problem(root: Path) -> str | None:
    if not root.exists():
        return "no such folder"
    if not root.is_dir():
        return "not a folder"
    jars = root / "jars"
    if not jars.is_dir() or not any(jars.glob("*.jar")):
        return "not a Fiji folder (no jars/ folder with ImageJ's .jar files)"
    if fiji_launcher(root) is None:
        return "not a Fiji folder (no Fiji launcher such as ImageJ-linux64 or fiji-linux-x64)"
    if _stitching_jar(root) is None:
        return ("this Fiji has no Stitching plugin (plugins/Stitching_*.jar): update Fiji "
                "(Help > Update...) with the Fiji update site enabled")
    return None


def _fiji_root(path: Path) -> Path:
    """Fiji.app from a path that may be the folder, its launcher or macOS's Contents/MacOS."""
    path = path.expanduser()
    if path.is_file():
        path = path.parent
    if path.name == "MacOS" and path.parent.name == "Contents":
        path = path.parent.parent
    return path


def find_fiji(path: str | os.PathLike | None = None) -> Path:
    """Locate a Fiji.app folder.

    Parameters
    ----------
    path : path, optional
        Fiji.app (or its launcher). Default: ``$FIJI_HOME``, else the usual install places
        (``~/Fiji.app``, ``/opt/Fiji.app``, ``/Applications/Fiji.app``, ``~/fiji-linux64/Fiji.app``...).

    Returns
    -------
    Path
        The Fiji.app folder, with a launcher, ``jars/`` and the Stitching plugin.

    Raises
    ------
    OfmTilingError
        One line saying what is missing.
    """
    if path is not None or os.environ.get("FIJI_HOME"):
        given = Path(path if path is not None else os.environ["FIJI_HOME"])
        root = _fiji_root(given)
        problem = _fiji_problem(root)
        if problem:
            where = "" if path is not None else " (from FIJI_HOME)"
            raise OfmTilingError(given, problem + where)
        return root.resolve()
    looked = []
    for place in USUAL_FIJI_PLACES:
        candidate = Path(os.path.expandvars(place)).expanduser()
        if "%" in str(candidate):
            continue
        looked.append(str(candidate))
        if _fiji_problem(candidate) is None:
            return candidate.resolve()
    raise OfmTilingError(None, "Fiji not found: install it from https://fiji.sc, then pass --fiji PATH/TO/Fiji.app "
                               f"or set FIJI_HOME (looked in {', '.join(looked[:4])}...)")


def missing_pyimagej_jars(fiji: str | os.PathLike) -> list[str]:
    """Jars pyimagej needs to start offline that this Fiji.app lacks (Maven artifact ids).

    pyimagej's ``imglyb`` needs ``net.imglib2:imglib2-imglyb`` and its dependency
    ``net.imglib2:imglib2-unsafe``; a plain Fiji ships neither and pyimagej would fetch them from
    Maven. Copy the two jars into ``Fiji.app/jars/`` to use pyimagej without network.
    """
    root = Path(fiji)
    present = [p.name for folder in (root / "jars", root / "plugins") if folder.is_dir()
               for p in folder.rglob("*.jar")]
    return [artifact for artifact in PYIMAGEJ_JARS
            if not any(name.startswith(artifact + "-") and name[len(artifact) + 1:][:1].isdigit()
                       for name in present)]


# --------------------------------------------------------------------------------------------
# Reading Fiji's results


class RegisteredLayout(NamedTuple):
    """Tile positions Fiji found (``TileConfiguration.registered.txt``).

    Attributes
    ----------
    names : list of str
        Tile file names in the file's order.
    positions : (N, 2) ndarray
        Registered top-left (x, y) in pixels; NaN where Fiji wrote something that is not a number.
    dropped : list of str
        Tiles Fiji dropped: written at exactly (0.0, 0.0) (or NaN) while their stage position puts
        them far from there. They have no link to any neighbour and are missing from the fused image.
    offset : (2,) ndarray or None
        Registered minus stage position, the median over tiles that were not dropped (None without
        stage positions).
    """

    names: list[str]
    positions: np.ndarray
    dropped: list[str]
    offset: np.ndarray | None


def read_registered(path: str | os.PathLike,
                    stage: Mapping[str, Sequence[float]] | None = None,
                    tolerance: float | None = None) -> RegisteredLayout:
    """Read Fiji's registered TileConfiguration and find the tiles it dropped.

    Parameters
    ----------
    path : path
        ``TileConfiguration.registered.txt`` (numbers in Java ``double`` form: ``1.0E-4``, ``-0.0``,
        ``NaN``, ``Infinity``...).
    stage : mapping of name to (x, y), optional
        Stage-derived positions. Default: read from the same name without ``.registered``
        (``TileConfiguration.txt`` beside it), when it exists.
    tolerance : float, optional
        How far (px) a tile at (0, 0) must be from where its stage position predicts to count as
        dropped. Default: a quarter of the median distance between neighbouring stage positions,
        at least 50 px.

    Returns
    -------
    RegisteredLayout
    """
    path = Path(path)
    names, positions = read_tile_configuration(path)
    positions = np.where(np.isfinite(positions), positions, np.nan)
    if stage is None:
        sibling = path.with_name(path.name.replace(".registered", "")) if ".registered" in path.name else None
        if sibling is not None and sibling.is_file():
            stage_names, stage_pos = read_tile_configuration(sibling)
            stage = dict(zip(stage_names, map(tuple, stage_pos)))
    if not stage:
        dropped = [n for n, p in zip(names, positions) if not np.isfinite(p).all()]
        return RegisteredLayout(names, positions, dropped, None)
    missing = [n for n in names if n not in stage]
    if missing:
        raise OfmTilingError(path, f"tile {missing[0]} has no stage position")
    stage_pos = np.array([stage[n] for n in names], dtype=float).reshape(-1, 2)
    at_origin = np.all(positions == 0.0, axis=1)
    unknown = ~np.isfinite(positions).all(axis=1)
    trusted = ~at_origin & ~unknown
    offset = np.median(positions[trusted] - stage_pos[trusted], axis=0) if trusted.any() else np.zeros(2)
    if tolerance is None:
        tolerance = 50.0
        if len(stage_pos) > 1:
            d = np.linalg.norm(stage_pos[:, None, :] - stage_pos[None, :, :], axis=2)
            np.fill_diagonal(d, np.inf)
            tolerance = max(tolerance, 0.25 * float(np.median(d.min(axis=1))))
    far = np.linalg.norm(stage_pos + offset, axis=1) > tolerance
    dropped = [n for n, o, u, f in zip(names, at_origin, unknown, far) if u or (o and f)]
    return RegisteredLayout(names, positions, dropped, offset)


def _open_channel(path: Path) -> np.ndarray:
    import tifffile

    try:
        try:
            data = tifffile.memmap(path, mode="r")  # Fiji writes plain uncompressed strips
        except (ValueError, TypeError, OSError):
            data = tifffile.imread(path)
    except FileNotFoundError:
        raise OfmTilingError(path, "file not found") from None
    except Exception as exc:  # tifffile raises several types for damaged or non-TIFF files
        raise OfmTilingError(path, f"cannot read Fiji's fused channel ({exc})") from None
    data = np.squeeze(data)
    if data.ndim != 2:
        raise OfmTilingError(path, f"expected one 2-D image plane, found shape {data.shape}")
    if data.dtype != np.uint8:
        raise OfmTilingError(path, f"expected an 8-bit image, found {data.dtype}")
    return data


def merge_channels(output_dir: str | os.PathLike, *, band_height: int = 512) -> tuple[tuple[int, int], Iterator[tuple[int, np.ndarray]]]:
    """Merge Fiji's fused channels (``img_t1_z1_c1``, ``_c2``, ``_c3``, no extension) into RGB bands.

    Parameters
    ----------
    output_dir : path
        Fiji's ``output_directory``.
    band_height : int
        Rows per band.

    Returns
    -------
    shape : (int, int)
        Mosaic (height, width).
    bands : iterator of (int, ndarray)
        ``(y0, band)`` with band uint8 of shape (rows, width, 3), top to bottom, as
        `ofm_tiling.writers.write_ome_tiff` takes them. A single channel (grey tiles) is repeated
        into R, G and B.

    Raises
    ------
    OfmTilingError
        The first channel is missing, channels differ in size, or a file is not an 8-bit TIFF.
    """
    folder = Path(output_dir)
    paths = [folder / name for name in CHANNEL_FILES]
    if not paths[0].is_file():
        raise OfmTilingError(paths[0], "Fiji wrote no fused image here (did the stitching fail? see Fiji's messages)")
    present = [p for p in paths if p.is_file()]
    if len(present) == 2:
        raise OfmTilingError(paths[2], "Fiji wrote two colour channels but not the third")
    channels = [_open_channel(p) for p in present]
    shape = channels[0].shape
    for p, c in zip(present, channels):
        if c.shape != shape:
            raise OfmTilingError(p, f"channel is {c.shape[1]}x{c.shape[0]} px, the first one {shape[1]}x{shape[0]}")
    if len(channels) == 1:
        channels = channels * 3
    if band_height < 1:
        raise ValueError("band_height must be >= 1")

    def bands() -> Iterator[tuple[int, np.ndarray]]:
        for y0 in range(0, shape[0], band_height):
            y1 = min(y0 + band_height, shape[0])
            band = np.empty((y1 - y0, shape[1], 3), dtype=np.uint8)
            for k, c in enumerate(channels):
                band[..., k] = c[y0:y1]
            yield y0, band

    return (int(shape[0]), int(shape[1])), bands()


# --------------------------------------------------------------------------------------------
# Running Fiji


@dataclass
class FijiResult:
    """What a Fiji run found.

    Attributes
    ----------
    names : list of str
        Tile names, in the order of ``use/TileConfiguration.txt``.
    positions : (N, 2) ndarray
        Registered top-left (x, y) per tile. Dropped tiles are put where their stage position
        predicts (they are not in Fiji's fused image).
    stage_positions : (N, 2) ndarray
        Stage-derived positions, same order.
    dropped : list of str
        Tiles Fiji dropped (no link to a neighbour).
    notes : list of str
        Things the user should know about the result (dropped tiles, the grid used).
    method : {"pyimagej", "launcher"}
        How Fiji was run.
    options : str
        The Grid/Collection option string used.
    macro : str
        The macro run.
    fiji : Path
        The Fiji.app folder.
    fused_dir : Path or None
        Temporary folder with Fiji's fused channels; removed by `close` or when the bands of `fused`
        are exhausted.
    log : str
        Fiji's console output (launcher runs).
    fallback : str or None
        Why pyimagej was not used, when ``method="auto"`` fell back to the launcher (already logged
        as a warning).
    """

    names: list[str]
    positions: np.ndarray
    stage_positions: np.ndarray
    dropped: list[str]
    notes: list[str]
    method: str
    options: str
    macro: str
    fiji: Path
    fused_dir: Path | None = None
    log: str = ""
    fallback: str | None = None
    _cleanup: Callable[[], None] | None = field(default=None, repr=False)

    def fused(self) -> tuple[tuple[int, int], Iterator[tuple[int, np.ndarray]]]:
        """Fiji's fused mosaic as ``(shape, bands)`` for `write_ome_tiff` (see `merge_channels`).

        The temporary channel files are removed once the bands have been read.
        """
        if self.fused_dir is None:
            raise OfmTilingError(None, "this Fiji run kept no fused image")
        shape, bands = merge_channels(self.fused_dir)

        def then_clean() -> Iterator[tuple[int, np.ndarray]]:
            try:
                yield from bands
            finally:
                self.close()

        return shape, then_clean()

    def close(self) -> None:
        """Remove the temporary fused channels."""
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None
        self.fused_dir = None


def default_heap_mb(fraction: float = 0.75) -> int | None:
    """Java heap for Fiji: `fraction` of the memory available now (MemAvailable), in MB."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return max(512, int(available * fraction / 2**20))


class _FallBack(Exception):
    """pyimagej cannot be used here; run the launcher instead (the message says why)."""


def _run_pyimagej(root: Path, macro: str, heap_mb: int | None) -> str:
    """Run `macro` in a Fiji started inside this Python process through pyimagej."""
    try:
        import scyjava
    except ImportError as exc:
        raise _FallBack(f"pyimagej is not installed ({exc})") from None
    if scyjava.jvm_started():
        raise _FallBack("a Java VM is already running in this Python process, so Fiji's jars cannot be added")
    try:
        import imagej
    except ImportError as exc:
        raise _FallBack(f"pyimagej is not installed ({exc})") from None
    if hasattr(scyjava.config, "set_java_constraints"):
        # The default fetches a JDK from the internet; "auto" uses the installed Java (>= 11).
        # ("never" crashes inside pyimagej 1.8.0's Java version guess.)
        scyjava.config.set_java_constraints(fetch="auto")
    # `import imagej` imports imglyb, which asks jgo for net.imglib2:imglib2-imglyb from Maven.
    scyjava.config.endpoints.clear()
    if heap_mb:
        scyjava.config.add_option(f"-Xmx{int(heap_mb)}m")
    try:
        ij = imagej.init(str(root), mode="headless")
    except Exception as exc:  # pyimagej raises plain Exceptions and Java errors alike
        raise _FallBack(f"pyimagej could not start Fiji ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    try:
        ij.py.run_macro(macro)
    except Exception as exc:  # a Java exception from inside Fiji
        raise OfmTilingError(root, f"Fiji failed while stitching ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return ""


def _run_launcher(root: Path, macro: str, heap_mb: int | None, work: Path, timeout: float | None,
                  progress: Callable[[str], None] | None) -> str:
    """Run `macro` with the Fiji launcher as a headless subprocess; returns its console output."""
    launcher = fiji_launcher(root)
    if launcher is None:
        raise OfmTilingError(root, "no Fiji launcher found (ImageJ-linux64, fiji-linux-x64, ImageJ-win64.exe...)")
    macro_file = work / "ofm-tiling-stitch.ijm"
    macro_file.write_text(macro, encoding="ascii")
    cmd = [str(launcher)]
    if heap_mb:
        cmd.append(f"--mem={int(heap_mb)}m")
    cmd.append("--headless")
    if launcher.name.startswith("ImageJ-"):
        cmd.append("--console")  # old launcher: print to this console (Jaunch does by default)
    cmd += ["-macro", str(macro_file)]
    log.debug("running %s", " ".join(cmd))
    lines: list[str] = []
    try:
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace")
    except OSError as exc:
        raise OfmTilingError(launcher, f"cannot run the Fiji launcher ({exc.strerror or exc})") from None
    deadline = None if timeout is None else time.monotonic() + timeout
    finished = False
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip("\n")
            lines.append(line)
            log.debug("fiji: %s", line)
            if progress is not None and line.strip():
                progress(line.strip())
            if line.startswith("ofm-tiling: done") or line.startswith("ofm-tiling: ERROR"):
                finished = True
                break  # the macro is over; some headless Fiji versions then fail to exit
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(cmd, timeout or 0)
        if finished:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        else:
            proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise OfmTilingError(launcher, f"Fiji did not finish within {timeout:.0f} s") from None
    finally:
        proc.stdout.close()
    output = "\n".join(lines)
    if proc.returncode != 0 and not finished:
        tail = " | ".join(l for l in lines[-5:] if l.strip())
        raise OfmTilingError(launcher, f"Fiji stopped with exit code {proc.returncode}: {tail or 'no output'}")
    return output


def _bracket_free(path: Path, holder: list[Path]) -> Path:
    """`path`, or a bracket-free symbolic link to it (Fiji's options cannot carry '[' or ']')."""
    if "[" not in str(path) and "]" not in str(path):
        return path
    link_dir = Path(tempfile.mkdtemp(prefix="ofm-tiling-link-"))
    holder.append(link_dir)
    link = link_dir / "use"
    try:
        if "[" in str(link) or "]" in str(link):
            raise OSError("the temporary folder path has brackets too")
        os.symlink(path, link, target_is_directory=True)
    except (OSError, NotImplementedError) as exc:
        raise OfmTilingError(path, "Fiji cannot read a folder whose path contains '[' or ']' and no link "
                                   f"could be made ({exc}): rename the folder") from None
    return link


def run_fiji(
    use_dir: str | os.PathLike,
    *,
    fiji: str | os.PathLike | None = None,
    layout: str = "positions",
    stage_positions: np.ndarray | None = None,
    tile_shape: tuple[int, int] | None = None,
    heap_gb: float | None = None,
    method: str = "auto",
    timeout: float | None = None,
    progress: Callable[[str], None] | None = None,
    show_progress: bool = False,
    **options,
) -> FijiResult:
    """Register (and fuse) a collected scan with Fiji's Grid/Collection stitching.

    Parameters
    ----------
    use_dir : path
        ``SCAN/use`` with the tiles and ``TileConfiguration.txt``.
    fiji : path, optional
        Fiji.app (default: see `find_fiji`).
    layout : {"positions", "grid"}
        Positions from ``TileConfiguration.txt`` (any scan), or Fiji's grid types (complete
        rectangular scans only; the grid is inferred from the stage positions with `infer_grid`).
    stage_positions : (N, 2) array, optional
        Stage-derived positions in the order of ``TileConfiguration.txt`` (default: read from it).
    tile_shape : (int, int), optional
        Tile (height, width); needed for the grid layout (default: read from the first tile).
    heap_gb : float, optional
        Java heap (default: 75% of the memory available now).
    method : {"auto", "pyimagej", "launcher"}
        ``auto``: pyimagej in this process when it can start offline, else the Fiji launcher as a
        headless subprocess (with a warning saying why).
    timeout : float, optional
        Seconds to wait for a launcher run.
    progress : callable, optional
        Called with a short message at each step (and each Fiji console line).
    show_progress : bool
        Log the steps at INFO level.
    **options
        Passed to `grid_collection_options` (fusion, thresholds...).

    Returns
    -------
    FijiResult
        Registered positions in ``TileConfiguration.txt`` order, dropped tiles, notes, and
        ``fused()`` giving the fused mosaic as RGB bands.

    Raises
    ------
    OfmTilingError
        Fiji missing or failing, no registered layout written, no fused image.
    """
    use = Path(use_dir).resolve()

    def step(message: str) -> None:
        if show_progress:
            log.info("fiji: %s", message)
        if progress is not None:
            progress(message)

    root = find_fiji(fiji)
    names, file_positions = read_tile_configuration(use / LAYOUT_FILE)
    stage = file_positions if stage_positions is None else np.asarray(stage_positions, dtype=float).reshape(-1, 2)
    if len(stage) != len(names):
        raise OfmTilingError(use / LAYOUT_FILE, f"{len(names)} tiles but {len(stage)} stage positions were given")
    if len(names) < 2:
        raise OfmTilingError(use / LAYOUT_FILE, "Fiji needs at least 2 tiles to stitch")

    notes: list[str] = []
    links: list[Path] = []
    work = Path(tempfile.mkdtemp(prefix="ofm-tiling-fiji-"))
    fused_dir: Path | None = None

    def cleanup() -> None:
        for folder in [work, *links] + ([fused_dir] if fused_dir is not None else []):
            shutil.rmtree(folder, ignore_errors=True)

    try:
        fiji_use = _bracket_free(use, links)
        # Fused channels go beside the tiles: the scan's disk has room for a mosaic, /tmp may not.
        fused_dir = Path(tempfile.mkdtemp(prefix=".fiji-fused-", dir=use))
        fiji_fused = fiji_use / fused_dir.name
        opts = dict(options)
        if layout == "grid":
            if tile_shape is None:
                from PIL import Image

                with Image.open(use / names[0]) as im:
                    tile_shape = (im.height, im.width)
            spec = infer_grid(stage, tile_shape)
            pattern, first = tile_name_pattern(names)
            opts.update(layout="grid", grid=spec, file_pattern=pattern, first_index=first)
            registered = use / GRID_TEXTFILE.replace(".txt", ".registered.txt")
            notes.append(f"Fiji grid layout: {spec.describe()}")
        elif layout == "positions":
            opts.update(layout="positions")
            registered = use / LAYOUT_FILE.replace(".txt", ".registered.txt")
        else:
            raise OfmTilingError(None, f"Fiji layout must be 'positions' or 'grid', not {layout!r}")
        option_string = grid_collection_options(fiji_use, output_directory=fiji_fused, **opts)
        macro = stitching_macro(fiji_use, fiji_fused, **opts)
        # A registered layout left by an earlier run must not pass for this run's.
        registered.unlink(missing_ok=True)

        heap_mb = int(heap_gb * 1024) if heap_gb else default_heap_mb()
        used = method
        output = ""
        fallback = None
        if method not in ("auto", "pyimagej", "launcher"):
            raise OfmTilingError(None, f"method must be 'auto', 'pyimagej' or 'launcher', not {method!r}")
        if method in ("auto", "pyimagej"):
            missing = missing_pyimagej_jars(root)
            try:
                if missing:
                    raise _FallBack(f"Fiji lacks {' and '.join(j + '-*.jar' for j in missing)}, which pyimagej "
                                    f"needs offline; copy them into {root / 'jars'} (see the README) to run Fiji "
                                    "inside Python")
                step(f"starting Fiji from {root} with pyimagej")
                output = _run_pyimagej(root, macro, heap_mb)
                used = "pyimagej"
            except _FallBack as why:
                if method == "pyimagej":
                    raise OfmTilingError(root, str(why)) from None
                # Logged now, before the long run, rather than added to the notes (about the result).
                fallback = f"{why}; running the Fiji launcher instead"
                log.warning(fallback)
                used = "launcher"
        if used == "launcher":
            step(f"running Fiji headless: {fiji_launcher(root) or root}")
            output = _run_launcher(root, macro, heap_mb, work, timeout, progress)

        step("reading Fiji's registered positions")
        if not registered.is_file():
            tail = " | ".join(l for l in output.splitlines()[-5:] if l.strip())
            raise OfmTilingError(registered, "Fiji wrote no registered layout, so the stitching failed"
                                             + (f": {tail}" if tail else " (see Fiji's messages)"))
        result = read_registered(registered, stage=dict(zip(names, map(tuple, stage))))
        by_name = dict(zip(result.names, result.positions))
        absent = [n for n in names if n not in by_name]
        if absent:
            raise OfmTilingError(registered, f"Fiji's layout has no position for {absent[0]}")
        positions = np.array([by_name[n] for n in names], dtype=float)
        offset = result.offset if result.offset is not None else np.zeros(2)
        dropped = [n for n in names if n in set(result.dropped)]
        for i, name in enumerate(names):
            if name in dropped:
                positions[i] = stage[i] + offset
        if dropped:
            notes.append(f"Fiji dropped {len(dropped)} tile(s) with no link to a neighbour, so they are missing "
                         f"from the fused mosaic: {', '.join(dropped)}")
        merge_channels(fused_dir)  # fail now, not halfway through writing, if the image is missing
    except BaseException:
        cleanup()
        raise

    outcome = FijiResult(names=names, positions=positions, stage_positions=stage, dropped=dropped, notes=notes,
                         method=used, options=option_string, macro=macro, fiji=root, fused_dir=fused_dir,
                         log=output, fallback=fallback)
    shutil.rmtree(work, ignore_errors=True)
    finalizer = weakref.finalize(outcome, cleanup)
    outcome._cleanup = finalizer
    return outcome
