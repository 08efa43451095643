"""Recognising a complete rectangular scan and the order it was taken in, as Fiji's Grid types number it."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import OfmTilingError
from ..layout import group_rows
from .options import COLUMN_ORDERS, GRID_TYPES, ROW_ORDERS, GridSpec

__all__ = ["infer_grid"]


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


def _check_steps(name: str, centres: np.ndarray) -> None:
    steps = np.diff(centres)
    if steps.size > 1 and steps.max() - steps.min() > 0.2 * steps.mean():
        raise OfmTilingError(None, f"the {name} are not evenly spaced (steps of {steps.min():.0f} to "
                                   f"{steps.max():.0f} px): not a regular grid")


def _check_cells(cells: list[tuple[int, int]], cols: int, rows: int) -> None:
    """Every grid cell taken exactly once."""
    seen: dict[tuple[int, int], int] = {}
    for i, cell in enumerate(cells):
        if cell in seen:
            raise OfmTilingError(None, f"tiles {seen[cell]} and {i} were taken at the same grid position "
                                       f"(column {cell[0] + 1}, row {cell[1] + 1}): not a regular grid")
        seen[cell] = i
    if len(seen) != cols * rows:
        missing = [(c, r) for r in range(rows) for c in range(cols) if (c, r) not in seen]
        c, r = missing[0]
        raise OfmTilingError(None, f"the scan is not a complete rectangular grid: {len(cells)} tiles on a "
                                   f"{cols} x {rows} grid, {len(missing)} position(s) missing "
                                   f"(first: column {c + 1}, row {r + 1})")


def _overlaps(xs: np.ndarray, ys: np.ndarray, h: float, w: float) -> tuple[float | None, float | None]:
    overlap_x = 100.0 * (1.0 - float(np.diff(xs).mean()) / w) if len(xs) > 1 else None
    overlap_y = 100.0 * (1.0 - float(np.diff(ys).mean()) / h) if len(ys) > 1 else None
    for axis, value in (("x", overlap_x), ("y", overlap_y)):
        if value is not None and value < 0:
            raise OfmTilingError(None, f"neighbouring tiles do not overlap in {axis} ({value:.0f}%): "
                                       "Fiji cannot stitch them")
    return overlap_x, overlap_y


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
    if len(pos) < 2:
        raise OfmTilingError(None, f"a Fiji grid needs at least 2 tiles, the scan has {len(pos)}")
    if not np.isfinite(pos).all():
        raise OfmTilingError(None, "some stage positions are unknown: not a regular grid")
    by_x, by_y = group_rows(pos[:, 0], w), group_rows(pos[:, 1], h)  # columns, rows
    col, xs = by_x.labels, by_x.centres
    row, ys = by_y.labels, by_y.centres
    _check_steps("columns", xs)
    _check_steps("rows", ys)
    cells = list(zip(col.tolist(), row.tolist()))
    _check_cells(cells, len(xs), len(ys))
    overlap_x, overlap_y = _overlaps(xs, ys, h, w)
    for type_index, grid_type in enumerate(GRID_TYPES):
        orders = ROW_ORDERS if type_index in (0, 2) else COLUMN_ORDERS
        for order_index, order in enumerate(orders):
            if _fiji_cells(type_index, order_index, len(xs), len(ys)) == cells:
                return GridSpec(len(xs), len(ys), grid_type, order, overlap_x, overlap_y, tuple(cells))
    raise OfmTilingError(None, f"the tiles fill a {len(xs)} x {len(ys)} grid but were not taken row by row, column "
                               "by column or as a snake from a corner, so Fiji's grid types cannot number them "
                               "(use the positions layout)")
