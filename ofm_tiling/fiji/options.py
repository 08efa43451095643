"""The option string of Fiji's "Grid/Collection stitching" and the plugin's exact choice strings.

The plugin is driven through its macro options (one string of ``key=[value]`` pairs and bare flags).
ImageJ reads that string with rules that make mistakes silent, so everything here is explicit:

* every key the plugin reads is always passed: a key left out inherits the value of the previous
  run in the same Java VM;
* checkboxes are bare flags, and an absent flag is FALSE even where the dialog's default is true;
* ``directory=`` comes before ``output_directory=`` (ImageJ finds ``directory=`` inside
  ``output_directory=``);
* choice values are the plugin's exact strings, trailing padding included (headless, a choice that
  matches nothing silently becomes the first one);
* values are bracketed, so a path holding ``[`` or ``]`` cannot be passed: the run reaches such a
  folder through a bracket-free symbolic link, `grid_collection_options` refuses it.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OfmTilingError

__all__ = ["GridSpec", "grid_collection_options", "tile_name_pattern", "plain_value", "path_value",
           "STITCHING_COMMAND", "LAYOUT_FILE", "CHECKED_FILE", "REGISTRATION_ONLY"]

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

LAYOUT_FILE = "TileConfiguration.txt"
#: Grid types write their own initial TileConfiguration into the tile folder: never over ours.
GRID_TEXTFILE = "TileConfiguration.grid.txt"


REGISTRATION_ONLY = FUSION_METHODS[-1]
#: The positions after ofm-tiling's checks of Fiji's registration (what the macro fuses).
CHECKED_FILE = "TileConfiguration.checked.txt"


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


def path_value(path: str | os.PathLike, what: str) -> str:
    """A path as Fiji should get it: forward slashes, and nothing the option parser misreads."""
    text = Path(path).as_posix() if isinstance(path, os.PathLike) else str(path).replace("\\", "/")
    return plain_value(text, what, path)


def plain_value(text: str, what: str, path: str | os.PathLike | None = None) -> str:
    """`text` as a bracketed option value, or a one-line error saying why Fiji would misread it."""
    # ImageJ ends a [value] at its matching ']' (older versions: at the first one): a bracket inside
    # would cut the value short and spill the rest into other keys.
    if "[" in text or "]" in text:
        raise OfmTilingError(path, f"Fiji's option parser cannot take a {what} containing '[' or ']': "
                                   "rename it (or let the Fiji backend reach it through a link)")
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



def _positions_keys(folder: str, layout_file: str) -> list[str]:
    return [f"type=[{POSITIONS_TYPE}]", f"order=[{POSITIONS_ORDER}]", f"directory=[{folder}]",
            f"layout_file=[{plain_value(layout_file, 'layout file name')}]"]


def _grid_type_and_order(grid: GridSpec | tuple[int, int], order: str | None) -> tuple[int, int, str, str]:
    if isinstance(grid, GridSpec):
        return grid.cols, grid.rows, grid.grid_type, grid.order
    cols, rows = (int(v) for v in grid)
    kind = order or "raster"
    if kind not in ("raster", "snake"):
        raise OfmTilingError(None, f"order must be 'raster' or 'snake', not {kind!r}")
    return cols, rows, GRID_TYPES[0] if kind == "raster" else GRID_TYPES[2], ROW_ORDERS[0]


def _grid_keys(directory: str | os.PathLike, folder: str, *, layout_file: str, file_pattern: str | None,
               grid: GridSpec | tuple[int, int] | None, order: str | None, overlap_percent: float | None,
               first_index: int, output_textfile_name: str | None) -> list[str]:
    if grid is None:
        raise OfmTilingError(directory, "the Fiji grid layout needs the grid size (columns x rows)")
    cols, rows, grid_type, grid_order = _grid_type_and_order(grid, order)
    if overlap_percent is None and isinstance(grid, GridSpec):
        overlap_percent = grid.overlap_percent
    if cols < 1 or rows < 1 or cols * rows < 2:
        raise OfmTilingError(directory, f"a {cols} x {rows} grid has fewer than the 2 tiles Fiji needs")
    if overlap_percent is None:
        raise OfmTilingError(directory, "the Fiji grid layout needs the tile overlap in percent")
    if not 0 <= float(overlap_percent) < 100:
        raise OfmTilingError(directory, f"tile overlap must be between 0 and 100 %, not {overlap_percent}")
    pattern = plain_value(file_pattern or "{ii}.jpeg", "file name pattern")
    if "{i" not in pattern or "i}" not in pattern:
        # Without {i...} every grid cell gets the same file: Fiji repeats the first tile.
        raise OfmTilingError(None, f"file name pattern {pattern!r} has no {{i}}/{{ii}}/{{iii}} index")
    textfile = plain_value(output_textfile_name or GRID_TEXTFILE, "output text file name")
    if textfile == layout_file:
        raise OfmTilingError(Path(directory) / textfile,
                             "a Fiji grid run writes its own layout there, which would overwrite the stage positions")
    return [f"type=[{grid_type}]", f"order=[{grid_order}]", f"grid_size_x={cols}", f"grid_size_y={rows}",
            f"tile_overlap={_number(overlap_percent, 'tile_overlap')}", f"first_file_index_i={int(first_index)}",
            f"directory=[{folder}]", f"file_names=[{pattern}]", f"output_textfile_name=[{textfile}]"]


def _common_keys(*, fusion: str, regression_threshold: float, max_avg_displacement: float,
                 absolute_displacement: float, compute_overlap: bool, subpixel: bool,
                 output_directory: str | os.PathLike | None, save_memory: bool) -> list[str]:
    parts = [f"fusion_method=[{fusion}]",
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
        return parts + [f"image_output=[{FUSE_AND_DISPLAY}]"]
    # Last, after directory=, which ImageJ would otherwise find inside output_directory=.
    return parts + [f"image_output=[{WRITE_TO_DISK}]",
                    f"output_directory=[{path_value(output_directory, 'output folder path')}]"]


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
        One of `FUSION_METHODS` (`REGISTRATION_ONLY` writes only the registered layout).
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
    folder = path_value(directory, "tile folder path")
    if layout == "positions":
        parts = _positions_keys(folder, layout_file)
    elif layout == "grid":
        parts = _grid_keys(directory, folder, layout_file=layout_file, file_pattern=file_pattern, grid=grid,
                           order=order, overlap_percent=overlap_percent, first_index=first_index,
                           output_textfile_name=output_textfile_name)
    else:
        raise OfmTilingError(None, f"layout must be 'positions' or 'grid', not {layout!r}")
    parts += _common_keys(fusion=fusion, regression_threshold=regression_threshold,
                          max_avg_displacement=max_avg_displacement, absolute_displacement=absolute_displacement,
                          compute_overlap=compute_overlap, subpixel=subpixel, output_directory=output_directory,
                          save_memory=save_memory)
    return " ".join(parts)


def tile_name_pattern(names: Sequence[str]) -> tuple[str, int]:
    """Fiji's file-name pattern for tiles numbered in acquisition order (``00.jpeg`` -> ``{ii}.jpeg``,
    ``000.tif`` -> ``{iii}.tif``; the suffix is the tiles', whatever their format).

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
        raise OfmTilingError(names[0], "tile names must be numbers (00.jpeg, 01.tif...) for Fiji's grid layout")
    width, first = len(stem), int(stem)
    # Fiji pads to at least the width and never truncates, so wider later names still match.
    pattern = "{" + "i" * width + "}" + dot + ext
    for k, name in enumerate(names):
        expected = f"{first + k:0{width}d}{dot}{ext}"
        if name != expected:
            raise OfmTilingError(name, f"Fiji's grid layout would look for {expected} here: tiles must be "
                                       "numbered consecutively in acquisition order")
    return pattern, first
