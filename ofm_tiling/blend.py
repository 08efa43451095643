"""Blending the tiles that cover one cell of the mosaic: feathered weighted mean or nearest centre.

A cell is a rectangle covered by a fixed set of tiles (`ofm_tiling.fuse` cuts the mosaic into
them); these functions compute its pixels from the pieces of the tiles that cover it. 8-bit tiles
(RGB or grey) are blended in Pillow with 8-bit opacity masks; 16-bit grey tiles in numpy with
float32 weights, rounded once, because Pillow's masked paste holds 8 bits only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import Image

from .pixels import raised_cosine

__all__ = ["Ramp", "Piece", "overlap_widths", "feather_ramp", "blend_cell", "nearest_cell"]


def overlap_widths(off: np.ndarray, tile_shape: tuple[int, int]) -> tuple[float, float]:
    """Median overlap (pixels) of left/right and of top/bottom neighbours; 0 where none.

    These are the default feather widths. `off` holds integer (x, y) tile corners; `tile_shape`
    is (height, width).
    """
    th, tw = tile_shape
    across, down = [np.empty(0)], [np.empty(0)]
    for i in range(len(off) - 1):  # O(N^2) but vectorised per tile: ~60 ms for 2500 tiles
        d = np.abs(off[i + 1 :] - off[i])
        ox, oy = tw - d[:, 0], th - d[:, 1]  # extent of the shared rectangle
        fx, fy = ox / tw, oy / th
        # Left/right neighbours share most rows and a thin strip of columns; top/bottom the
        # converse. Diagonal neighbours (small in both directions) are not edges.
        across.append(ox[(ox > 0) & (fy > 0.5) & (fx <= fy)])
        down.append(oy[(oy > 0) & (fx > 0.5) & (fy < fx)])
    a, b = np.concatenate(across), np.concatenate(down)
    return (float(np.median(a)) if a.size else 0.0, float(np.median(b)) if b.size else 0.0)


@dataclass(frozen=True)
class Ramp:
    """Feather weights along one tile axis, and the range ``lo:hi`` where they are exactly 1."""

    w: np.ndarray
    lo: int
    hi: int


def feather_ramp(n: int, width: float) -> Ramp:
    w = raised_cosine(n, width)
    ones = np.flatnonzero(w == 1)
    return Ramp(w, int(ones[0]), int(ones[-1]) + 1) if len(ones) else Ramp(w, 0, 0)


class Piece(NamedTuple):
    """The part of one tile that covers a cell."""

    tile: np.ndarray
    rows: slice
    cols: slice


class _Run(NamedTuple):
    """A stretch ``start:stop`` of a cell along one axis; `flat` when no weight varies in it."""

    start: int
    stop: int
    flat: bool


def _runs(spans: list[slice], ramp: Ramp) -> list[_Run]:
    """Split a cell's extent along one axis around the run where every covering tile's weight is
    exactly 1 (contiguous: each tile is 1 on its interior). A flat run has 1-D masks."""
    n = spans[0].stop - spans[0].start
    a, b = 0, n
    for s in spans:
        a, b = max(a, ramp.lo - s.start), min(b, ramp.hi - s.start)
    if a >= b:
        return [_Run(0, n, n == 1)]
    return [_Run(s, e, (s, e) == (a, b) or e - s == 1) for s, e in ((0, a), (a, b), (b, n)) if e > s]


def _inclusion_masks(ys: list[np.ndarray], xs: list[np.ndarray]) -> list[np.ndarray]:
    """Masks that blend tiles ``K-2 .. 0`` one by one over tile ``K-1`` into the weighted mean.

    Tile `k` has weight ``ys[k][:, None] * xs[k][None, :]``. Pasting tile `k` with opacity
    ``w_k / (w_k + ... + w_{K-1})`` over the blend of the tiles after it leaves the weighted mean
    of tiles ``k .. K-1``, so after tile 0 it is the mean of all. Masks are uint8 (255 = opaque),
    shaped like the broadcast weights: pass length-1 `ys` (or `xs`) where no weight varies.
    """
    w = [y[:, None] * x[None, :] for y, x in zip(ys, xs)]  # float32 throughout: the same values
    total = w[-1]                                           # whichever way a cell is split
    masks: list[np.ndarray] = [np.empty(0, np.uint8)] * (len(w) - 1)
    for k in range(len(w) - 2, -1, -1):
        total = total + w[k]
        a = w[k] / total
        a *= 255
        a += 0.5
        masks[k] = a.astype(np.uint8)
    return masks


def blend_cell(cover: list[Piece], ramps: tuple[Ramp, Ramp]) -> np.ndarray:
    """Feathered weighted mean of the tiles covering one cell, as an array of the tiles' type.

    The cell is assembled in Pillow: the last covering tile, then the others pasted over it with
    8-bit opacity masks (:func:`_inclusion_masks`). Pillow blends in one integer pass in C and
    releases the GIL, several times faster than float arithmetic in numpy. Weights are products of
    1-D ramps, and in most of an overlap all but one of them is 1 (a side overlap away from the
    corners), so masks are mostly 1-D and cost next to nothing.
    """
    if cover[0].tile.dtype != np.uint8:
        return _blend_cell_wide(cover, ramps)
    wy, wx = ramps
    base = cover[-1]
    cell = Image.fromarray(base.tile[base.rows, base.cols])
    for r0, r1, yflat in _runs([p.rows for p in cover], wy):
        ys = [wy.w[p.rows.start + r0 : p.rows.start + (r0 + 1 if yflat else r1)] for p in cover]
        for c0, c1, xflat in _runs([p.cols for p in cover], wx):
            xs = [wx.w[p.cols.start + c0 : p.cols.start + (c0 + 1 if xflat else c1)] for p in cover]
            masks = _inclusion_masks(ys, xs)
            shape = (r1 - r0, c1 - c0)
            for p, mask in reversed(list(zip(cover[:-1], masks))):  # K-2 .. 0
                src = p.tile[p.rows.start + r0 : p.rows.start + r1, p.cols.start + c0 : p.cols.start + c1]
                mask = np.ascontiguousarray(np.broadcast_to(mask, shape))
                cell.paste(Image.fromarray(src), (c0, r0), Image.fromarray(mask))
    return np.asarray(cell)


def _blend_cell_wide(cover: list[Piece], ramps: tuple[Ramp, Ramp]) -> np.ndarray:
    """:func:`blend_cell` for 16-bit tiles: the weighted mean in float32, rounded half up once.

    float32 holds a 16-bit value times a weight in (0, 1] to ~0.004 grey levels, so the rounded
    mean is within half a level of the exact one.
    """
    wy, wx = ramps
    first = cover[0]
    acc = np.zeros((first.rows.stop - first.rows.start, first.cols.stop - first.cols.start), np.float32)
    total = np.zeros_like(acc)
    for p in cover:
        w = wy.w[p.rows][:, None] * wx.w[p.cols][None, :]
        acc += w * p.tile[p.rows, p.cols]
        total += w
    acc /= total
    acc += 0.5
    return np.minimum(acc, np.iinfo(first.tile.dtype).max).astype(first.tile.dtype)


def nearest_cell(dst: np.ndarray, cover: list[Piece], tile_shape: tuple[int, int]) -> None:
    """Fill one cell with, at each pixel, the covering tile whose centre is nearest."""
    th, tw = tile_shape
    best = np.full(dst.shape[:2], np.inf, np.float32)  # squared distance to a tile centre
    for tile, ty, tx in cover:
        # Distances from pixel centres to the tile centre, in tile coordinates.
        dy = (np.arange(ty.start, ty.stop) + 0.5 - th / 2) ** 2
        dx = (np.arange(tx.start, tx.stop) + 0.5 - tw / 2) ** 2
        d = (dy[:, None] + dx[None, :]).astype(np.float32)
        closer = d < best  # strict: ties keep the earlier tile (higher up, then further left)
        np.copyto(best, d, where=closer)  # copyto(where=) is much faster than boolean indexing
        np.copyto(dst, tile[ty, tx], where=closer[..., None] if dst.ndim == 3 else closer)
