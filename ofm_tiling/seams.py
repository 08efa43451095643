"""Where overlapping tiles hand over to each other: every tile's feather weights along its two axes.

A tile's weight is the product of two 1-D ramps, one along its rows and one along its columns.
Along each axis the ramp is 0 next to an edge where the tile has a neighbour, rises over a
cross-fade zone of `SEAM_WIDTH` pixels centred in the narrowest overlap on that side, and is 1
beyond it; an edge without a neighbour keeps weight 1 up to the edge. Two neighbours' ramps face
each other over the same zone, so their weights sum to 1 there (a seamless cross-fade), and
outside it every pixel comes from exactly one tile, as that tile recorded it.

Why a narrow zone in the middle of the overlap, not a cross-fade over the whole overlap: the
tiles are registered to a few hundredths of a pixel, so a cross-fade hides differences of
brightness and colour as well over 128 pixels as over a thousand (gain steps are spread to under
a grey level per pixel), while most of the mosaic keeps its tiles' own pixels. Against a known
truth both are about as good (tests/test_fuse.py: a whole-overlap fade averages away a little
more noise, about 0.3 dB; the narrow zone takes more pixels from tile centres, away from
vignetting), and blending a narrow zone costs a fraction of blending every overlap.
A wider zone is there for whoever wants it (``width=np.inf`` cross-fades every whole overlap).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SEAM_WIDTH", "Ramp", "SideOverlaps", "seam_ramp", "side_overlaps", "tile_ramps"]

#: Width in pixels of the cross-fade between neighbouring tiles (capped by their overlap).
SEAM_WIDTH = 128.0


@dataclass(frozen=True)
class Ramp:
    """Weights along one tile axis, with the zones that let fusion skip arithmetic.

    Attributes
    ----------
    w : ndarray
        float32 weight of each pixel along the axis (read-only).
    zlo, lo, hi, zhi : int
        ``w == 0`` on ``[0, zlo)`` and ``[zhi, n)``; ``w == 1`` on ``[lo, hi)``; ``0 < w < 1``
        elsewhere (``lo == hi`` when no weight reaches 1).
    """

    w: np.ndarray
    zlo: int
    lo: int
    hi: int
    zhi: int

    @classmethod
    def of(cls, w: np.ndarray) -> Ramp:
        w = np.asarray(w, np.float32)
        w.flags.writeable = False
        nonzero, ones = np.flatnonzero(w > 0), np.flatnonzero(w == 1)
        if not len(nonzero):
            return cls(w, 0, 0, 0, 0)
        zlo, zhi = int(nonzero[0]), int(nonzero[-1]) + 1
        lo, hi = (int(ones[0]), int(ones[-1]) + 1) if len(ones) else (zlo, zlo)
        return cls(w, zlo, lo, hi, zhi)


def _rise(n: int, overlap: float, width: float) -> np.ndarray:
    """Weight rising from the axis start: 0, then a raised cosine over the middle `width` of the
    first `overlap` pixels, then 1 (pixel centres are half a pixel from the edge)."""
    fade = min(max(float(width), 1.0), max(float(overlap), 1.0))
    start = max(0.0, (float(overlap) - fade) / 2)
    t = np.clip((np.arange(n) + 0.5 - start) / fade, 0.0, 1.0)
    return np.sin(0.5 * np.pi * t) ** 2


def seam_ramp(n: int, lo_overlap: float | None, hi_overlap: float | None, *, width: float = SEAM_WIDTH) -> Ramp:
    """The ramp along an axis of `n` pixels whose low and high ends overlap their neighbours by
    these many pixels (None: no neighbour on that side, weight 1 up to the edge)."""
    w = np.ones(n)
    if lo_overlap is not None:
        w *= _rise(n, lo_overlap, width)
    if hi_overlap is not None:
        w *= _rise(n, hi_overlap, width)[::-1]
    return Ramp.of(w)


@dataclass(frozen=True)
class SideOverlaps:
    """The narrowest overlap (pixels) on each side of every tile; NaN where a side has no neighbour.

    Each overlapping pair counts along the axis where its shared rectangle is thinner (relative
    to the tile): left/right neighbours along x, top/bottom along y, diagonal ones along the
    thinner of the two.
    """

    left: np.ndarray
    right: np.ndarray
    top: np.ndarray
    bottom: np.ndarray


def side_overlaps(off: np.ndarray, tile_shape: tuple[int, int]) -> SideOverlaps:
    """`SideOverlaps` of tiles with integer top-left corners `off` ((N, 2) as (x, y))."""
    th, tw = tile_shape
    off = np.asarray(off, dtype=float)
    n = len(off)
    sides = {name: np.full(n, np.inf) for name in ("left", "right", "top", "bottom")}
    for i in range(n - 1):  # O(N^2) but vectorised per tile
        j = np.arange(i + 1, n)
        d = off[j] - off[i]
        ox, oy = tw - np.abs(d[:, 0]), th - np.abs(d[:, 1])
        touching = (ox > 0) & (oy > 0)
        along_x = ox / tw <= oy / th
        for axis, width, (low, high) in ((0, ox, ("left", "right")), (1, oy, ("top", "bottom"))):
            mine = touching & (along_x if axis == 0 else ~along_x)
            after = mine & (d[:, axis] >= 0)   # j to the right of / below i
            before = mine & (d[:, axis] < 0)
            sides[high][i] = min(sides[high][i], width[after].min(initial=np.inf))
            sides[low][i] = min(sides[low][i], width[before].min(initial=np.inf))
            np.minimum.at(sides[low], j[after], width[after])
            np.minimum.at(sides[high], j[before], width[before])
    return SideOverlaps(**{k: np.where(np.isinf(v), np.nan, v) for k, v in sides.items()})


def tile_ramps(off: np.ndarray, tile_shape: tuple[int, int], *,
               width: float = SEAM_WIDTH) -> list[tuple[Ramp, Ramp]]:
    """(rows, columns) ramps of every tile at integer top-left corners `off`, see the module text."""
    th, tw = tile_shape
    s = side_overlaps(off, tile_shape)
    cache: dict[tuple, Ramp] = {}  # tiles on a regular grid share most ramps

    def ramp(n: int, lo: float, hi: float) -> Ramp:
        key = (n, None if np.isnan(lo) else float(lo), None if np.isnan(hi) else float(hi))
        if key not in cache:
            cache[key] = seam_ramp(n, key[1], key[2], width=width)
        return cache[key]

    return [(ramp(th, s.top[i], s.bottom[i]), ramp(tw, s.left[i], s.right[i])) for i in range(len(off))]
