"""Which pairs to register and where: candidate pairs, strip geometry, coarse scale, null partners.

Everything here follows from the stage positions and the tile size alone (no pixels): the
`ScanPlan` that the measuring stage carries out.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PairGeometry", "NullComparison", "ScanPlan", "as_positions", "candidate_pairs", "plan_scan"]

# Default search radius as a fraction of the (median) narrow side of the predicted overlaps.
_RADIUS_FRACTION = 0.75
# Narrowest coarse strip (px) worth a phase correlation; the coarse scale is lowered to keep it.
_MIN_COARSE_STRIP = 24
# Fewest null comparisons: flipped strips top distant ones up to this in small scans.
_MIN_NULL = 32


def as_positions(positions: Any) -> np.ndarray:
    """`positions` as a finite (N, 2) float array of ``(x, y)``, or a ValueError."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must be an (N, 2) array of (x, y), got shape {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError("positions contain NaN or infinite values")
    return pos


def candidate_pairs(
    positions: np.ndarray, tile_shape: tuple[int, int], *, min_overlap: float = 0.05
) -> list[tuple[int, int]]:
    """Pairs of tiles whose predicted overlap is worth registering.

    Parameters
    ----------
    positions : (N, 2) array_like
        Predicted top-left corners ``(x, y)`` in pixels.
    tile_shape : (int, int)
        ``(height, width)`` of every tile.
    min_overlap : float
        Minimum predicted overlap area as a fraction of the tile area. With the default 0.05,
        side neighbours always qualify and diagonal neighbours do when the overlap exceeds ~22 %.

    Returns
    -------
    list of (int, int)
        Sorted pairs ``(i, j)`` with ``i < j``.
    """
    pos = as_positions(positions)
    h, w = (float(v) for v in tile_shape)
    if len(pos) < 2:
        return []
    # Only tiles closer than one tile size on both axes can overlap: a sweep along x finds them
    # (sorted by x, each tile meets the tiles less than a tile width to its right).
    order = np.argsort(pos[:, 0], kind="stable")
    xs = pos[order, 0]
    ends = np.searchsorted(xs, xs + w, side="left")
    found = [np.stack([np.full(e - k - 1, order[k]), order[k + 1:e]], axis=1)
             for k, e in enumerate(ends) if e > k + 1]
    pairs = np.concatenate(found) if found else np.empty((0, 2), np.int64)
    pairs = pairs[np.abs(pos[pairs[:, 1], 1] - pos[pairs[:, 0], 1]) < h]
    if len(pairs) == 0:
        return []
    pairs = np.sort(pairs, axis=1)
    ov = np.array([w, h]) - np.abs(pos[pairs[:, 1]] - pos[pairs[:, 0]])
    keep = (ov > 0).all(axis=1) & (ov.prod(axis=1) >= min_overlap * w * h)
    pairs = pairs[keep]
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return [(int(i), int(j)) for i, j in pairs]


@dataclass(frozen=True)
class PairGeometry:
    """Where a pair's strips are cut (coarse resolution, (row, col)) and where to search.

    Attributes
    ----------
    rect_i, rect_j : (slice, slice)
        The strips in tile i and tile j.
    base : (2,) ndarray of int
        ``origin_i - origin_j`` of the strips: the shift is ``base - c`` for a strip offset ``c``
        (B(u + c) = A(u)).
    lo, hi : (2,) ndarray of int
        Allowed offsets ``c``, inclusive.
    min_area : float
        Smallest overlap (px) a candidate offset may compare.
    """

    rect_i: tuple[slice, slice]
    rect_j: tuple[slice, slice]
    base: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    min_area: float


def pair_geometry(d_rc: np.ndarray, shape: tuple[int, int], radius: float,
                  min_fraction: float = 0.25) -> PairGeometry:
    """Strips and search window of a pair predicted at shift `d_rc` (rows, cols) in tiles of `shape`."""
    rect_i, rect_j, base, lo, hi, lengths = [], [], [], [], [], []
    for dd, n in zip(d_rc, shape):
        a, b = max(0.0, dd), min(float(n), dd + n)  # predicted overlap in tile i
        li, hi_i = max(0, math.floor(a - radius)), min(n, math.ceil(b + radius))
        lj, hj = max(0, math.floor(a - radius - dd)), min(n, math.ceil(b + radius - dd))
        c0 = li - lj - dd
        rect_i.append(slice(li, hi_i))
        rect_j.append(slice(lj, hj))
        base.append(li - lj)
        lo.append(math.ceil(c0 - radius))
        hi.append(math.floor(c0 + radius))
        lengths.append(max(b - a, 1.0))
    return PairGeometry((rect_i[0], rect_i[1]), (rect_j[0], rect_j[1]), np.array(base), np.array(lo),
                        np.array(hi), max(16.0, min_fraction * lengths[0] * lengths[1]))


@dataclass(frozen=True)
class NullComparison:
    """A registration attempt that cannot succeed: the tile-i strip of `pair` against the tile-j
    strip of `partner` (a distant pair of the same geometry), or against its own strip flipped
    (`flip` 1: both axes, 2: rows, 3: columns; 0: not flipped)."""

    pair: int
    partner: int
    flip: int = 0


@dataclass
class ScanPlan:
    """What to measure: the pairs, their predicted geometry and the null comparisons.

    Attributes
    ----------
    tile_shape : (int, int)
        ``(height, width)`` of every tile at full resolution.
    pairs : list of (int, int)
        The pairs ``(i, j)``, ``i < j``.
    predicted : (P, 2) ndarray
        Stage-predicted shifts ``(dx, dy)`` of the pairs.
    overlap : (P, 2) ndarray
        Predicted overlaps ``(width, height)``.
    radius : float
        Half-size (px, full resolution) of the search window.
    scale : int
        Reduction of the coarse level.
    geometry : list of PairGeometry
        Strips and search windows at the coarse level, one per pair.
    nulls : list of NullComparison
    """

    tile_shape: tuple[int, int]
    pairs: list[tuple[int, int]]
    predicted: np.ndarray
    overlap: np.ndarray
    radius: float
    scale: int
    geometry: list[PairGeometry]
    nulls: list[NullComparison]

    @property
    def coarse_shape(self) -> tuple[int, int]:
        """Size of the coarse level (rounded up, like a DCT-scaled decode)."""
        h, w = self.tile_shape
        return -(-h // self.scale), -(-w // self.scale)


def plan_scan(pos: np.ndarray, tile_shape: tuple[int, int], *, min_overlap: float,
              search_radius: float | None, coarse_scale: int | None, n_null: int,
              pairs: Sequence[tuple[int, int]] | None = None) -> ScanPlan:
    """Plan a registration: pairs, search radius, coarse scale, strip geometry and null comparisons.

    See :func:`ofm_tiling.register.register` for the parameters.
    """
    h, w = int(tile_shape[0]), int(tile_shape[1])
    chosen = candidate_pairs(pos, (h, w), min_overlap=min_overlap) if pairs is None else \
        [(min(int(i), int(j)), max(int(i), int(j))) for i, j in pairs]
    pair_arr = np.array(chosen, dtype=int).reshape(-1, 2)
    pred = pos[pair_arr[:, 1]] - pos[pair_arr[:, 0]]                       # (dx, dy)
    ov = np.array([w, h]) - np.abs(pred)                                   # (ow, oh)
    narrow = float(np.median(ov.min(axis=1))) if len(chosen) else 0.0
    radius = float(search_radius) if search_radius is not None else max(4.0, _RADIUS_FRACTION * narrow)
    scale = max(1, int(coarse_scale)) if coarse_scale is not None else (8 if min(h, w) >= 2048 else 4)
    while scale > 1 and narrow / scale < _MIN_COARSE_STRIP:
        scale //= 2
    plan = ScanPlan((h, w), chosen, pred, ov, radius, scale, [], [])
    plan.geometry = [pair_geometry(p[::-1] / scale, plan.coarse_shape, radius / scale) for p in pred]
    plan.nulls = [NullComparison(p, q) for p, q in _null_partners(pair_arr, pos, (h, w), radius, n_null)]
    # Too small a scan for distant strips: flipped strips have the same statistics and no overlap.
    flipped = [NullComparison(p, p, f) for f in (1, 2, 3) for p in range(len(chosen))]
    plan.nulls += flipped[:max(0, _MIN_NULL - len(plan.nulls))]
    return plan


def _null_partners(pairs: np.ndarray, pos: np.ndarray, tile_shape: tuple[int, int], radius: float,
                   n_null: int, per_pair: int = 4) -> list[tuple[int, int]]:
    """(p, q) couples: strip of pair p in tile i against the strip of pair q in a tile far from i.

    q has the same predicted geometry as p, so the comparison is exactly a registration attempt
    except that the content cannot overlap; q is picked close in scan order to keep both strips'
    time in memory short.
    """
    h, w = tile_shape
    if len(pairs) < 2:
        return []
    d = pos[pairs[:, 1]] - pos[pairs[:, 0]]
    tol = 0.1 * min(h, w)
    order_key = pairs.max(axis=1)
    chosen = np.unique(np.linspace(0, len(pairs) - 1, min(n_null, len(pairs))).round().astype(int))
    k = max(1, min(per_pair, -(-n_null // len(chosen))))  # small scans: several partners per pair
    out = []
    for p in chosen:
        i = pairs[p, 0]
        same = (np.abs(d - d[p]) <= tol).all(axis=1)
        far = (np.abs(pos[pairs[:, 1]] - pos[i]) >= np.array([w, h]) + radius).any(axis=1)
        ok = np.flatnonzero(same & far)
        for q in ok[np.argsort(np.abs(order_key[ok] - order_key[p]), kind="stable")[:k]]:
            out.append((int(p), int(q)))
    return out[:n_null]

