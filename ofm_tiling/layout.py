"""From stage positions (motor steps) to tile positions (pixels), their rows and columns, and the order
tiles were taken in.

Positions everywhere in ofm-tiling are (N, 2) float arrays of each tile's top-left corner in
pixels, x = column and y = row (y pointing down), as Fiji's TileConfiguration expects.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def stage_to_pixels(stage_xy: np.ndarray, csm: np.ndarray, *, csm_width: int, image_width: int) -> np.ndarray:
    """Convert stage positions to pixel positions with the camera-stage mapping.

    The camera-stage mapping `csm` is calibrated at `csm_width` and maps an image displacement
    given as (row, col) to a stage displacement: ``stage_xy = [d_row, d_col] @ csm``. One pixel
    at `image_width` spans ``csm_width / image_width`` calibration pixels, so the matrix for the
    saved images is ``csm * csm_width / image_width``.

    Parameters
    ----------
    stage_xy : (N, 2) array
        Stage x, y in steps.
    csm : (2, 2) array
        Camera-stage matrix.
    csm_width, image_width : int
        Width of the calibration images and of the saved tiles.

    Returns
    -------
    (N, 2) ndarray
        x (column) and y (row) in pixels, shifted so the smallest x and y are 0.
    """
    matrix = np.asarray(csm, dtype=float) * (csm_width / image_width)
    row_col = np.asarray(stage_xy, dtype=float) @ np.linalg.inv(matrix)
    xy = row_col[:, ::-1]
    return xy - xy.min(axis=0)


def grid_positions(n: int, *, cols: int, rows: int, tile_shape: tuple[int, int], overlap: float,
                   snake: bool = False) -> np.ndarray:
    """Positions of `n` tiles taken row by row (optionally snaking) on a regular grid.

    The fallback layout when the images carry no stage position.
    """
    if n > cols * rows:
        raise ValueError(f"{n} tiles do not fit a {cols}x{rows} grid")
    height, width = tile_shape
    step_x, step_y = width * (1 - overlap), height * (1 - overlap)
    out = np.empty((n, 2))
    for k in range(n):
        r, c = divmod(k, cols)
        if snake and r % 2:
            c = cols - 1 - c
        out[k] = (c * step_x, r * step_y)
    return out


@dataclass(frozen=True)
class RowGroups:
    """Positions grouped into rows (or columns) of a grid.

    Attributes
    ----------
    labels : (N,) ndarray of int
        The group of each position, 0 for the smallest coordinate.
    centres : (K,) ndarray of float
        Mean coordinate of each group, increasing.
    """

    labels: np.ndarray
    centres: np.ndarray


def group_rows(values: np.ndarray, tile_length: float) -> RowGroups:
    """Group 1-D tile coordinates into grid lines: y into rows, or x into columns.

    Positions are sorted and a new line starts at every gap larger than half the largest gap and
    larger than 0.15 tile lengths: steps between lines are the large gaps, stage error (tens of
    pixels) the small ones.

    Parameters
    ----------
    values : (N,) array
        One coordinate of every tile, in pixels.
    tile_length : float
        The tile's extent along that coordinate (height for rows, width for columns).

    Returns
    -------
    RowGroups
    """
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    gaps = np.diff(ordered)
    if gaps.size == 0:
        return RowGroups(np.zeros(len(values), dtype=int), ordered.copy())
    threshold = max(0.5 * float(gaps.max()), 0.15 * tile_length)
    sorted_labels = np.concatenate([[0], np.cumsum(gaps > threshold)])
    labels = np.empty(len(values), dtype=int)
    labels[order] = sorted_labels
    centres = np.array([ordered[sorted_labels == k].mean() for k in range(sorted_labels[-1] + 1)])
    return RowGroups(labels, centres)


def scan_order(xy: np.ndarray, tile_shape: tuple[int, int]) -> np.ndarray:
    """Indices that sort tiles row by row (top to bottom, then left to right).

    Rows are found by `group_rows`, so stage error of tens of pixels does not split a row.
    """
    xy = np.asarray(xy, dtype=float)
    if len(xy) == 0:
        return np.zeros(0, dtype=int)
    rows = group_rows(xy[:, 1], tile_shape[0]).labels
    return np.lexsort((xy[:, 0], rows))
