"""From stage positions (motor steps) to tile positions (pixels), and the order tiles were taken in.

Positions everywhere in ofm-tiling are (N, 2) float arrays of each tile's top-left corner in
pixels, x = column and y = row (y pointing down), as Fiji's TileConfiguration expects.
"""
from __future__ import annotations

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


def scan_order(xy: np.ndarray, tile_shape: tuple[int, int]) -> np.ndarray:
    """Indices that sort tiles row by row (top to bottom, then left to right).

    Rows are formed by grouping positions whose y differs by less than half a tile height, so
    stage error of tens of pixels does not split a row.
    """
    xy = np.asarray(xy, dtype=float)
    if len(xy) == 0:
        return np.zeros(0, dtype=int)
    by_y = np.argsort(xy[:, 1], kind="stable")
    row_of = np.empty(len(xy), dtype=int)
    row, start_y = 0, xy[by_y[0], 1]
    for k in by_y:
        if xy[k, 1] - start_y > tile_shape[0] / 2:
            row, start_y = row + 1, xy[k, 1]
        row_of[k] = row
    return np.lexsort((xy[:, 0], row_of))
