"""Matching a pair whose positions are nominal: every candidate, decided at full resolution.

Tiles laid out by hand or by a nominal grid (a Fiji ``TileConfiguration.txt`` with no stage
behind it) can be tens of pixels off at any overlap, and the specimen may repeat (graph paper,
gratings, calibration slides). A repeating pattern correlates almost as well one period away as
at the true shift, so the best peak of a phase correlation at reduced resolution is often an
alias, and reduction itself aliases fine periods. The **periodic-pattern rule**:

1. Candidates are the strongest local maxima of the exact Pearson correlation at the coarse level
   over the whole search window (every offset, not only phase-correlation peaks), on block means
   without band-pass: the large non-repeating marks (numbers, dots, stains, edges of the sample)
   carry the decision and a band-pass would remove them.
2. Each candidate is climbed at full resolution, comparing the two whole tiles over their whole
   overlap (:func:`~ofm_tiling.register.correlate.pooled_ncc`, the measure of the mosaic's overlap
   agreement): a shift one period off matches the repeating lines but not the marks.
3. The highest correlation wins. When candidates differ by less than the correlation's own noise
   (``1 / sqrt(pixels compared)``) the data cannot tell them apart, and the one nearest the nominal
   shift is kept.

Null comparisons run the same procedure on tiles that cannot overlap, so acceptance
(:mod:`ofm_tiling.register.accept`) compares like with like.
"""
from __future__ import annotations

import math

import numpy as np

from .correlate import climb, ncc_window, pooled_ncc, top_peaks
from .measure import MatchSettings, PairMeasurement
from .pairs import PairGeometry
from .tiles import reduce_tile

__all__ = ["nominal_match"]

_NAN = float("nan")


def nominal_match(full_i: np.ndarray, full_j: np.ndarray, g: PairGeometry,
                  settings: MatchSettings) -> PairMeasurement:
    """Shift of tile j relative to tile i by the periodic-pattern rule (see the module text).

    Parameters
    ----------
    full_i, full_j : ndarray
        The full-resolution grey tiles.
    g : PairGeometry
        The pair's strips and search window at the coarse level (``settings.scale``).
    settings : MatchSettings

    Returns
    -------
    PairMeasurement
        Integer shift (`coarse_shift`), its whole-overlap correlation and pixels compared, and the
        sub-pixel `refined_shift` with the same correlation as `fine_correlation`.
    """
    scale = settings.scale
    coarse_a = reduce_tile(full_i, scale)[g.rect_i]
    coarse_b = reduce_tile(full_j, scale)[g.rect_j]
    surface = ncc_window(coarse_a, coarse_b, g.lo, g.hi, g.min_area)
    # Twice the phase-correlation peaks: a repeating pattern has many near-equal maxima, and
    # neighbouring coarse offsets can climb to different full-resolution maxima (fine periods).
    peaks = top_peaks(surface, 2 * settings.n_peaks, radius=1)
    if not peaks:
        return PairMeasurement(None, _NAN, 0)
    a, b = full_i.astype(np.float32, copy=False), full_j.astype(np.float32, copy=False)
    # Full-resolution offsets c (B(u + c) = A(u), c = -shift) inside the coarse window.
    to_full = np.array([g.rect_i[0].start - g.rect_j[0].start, g.rect_i[1].start - g.rect_j[1].start])
    lo, hi = (g.lo - to_full) * scale, (g.hi - to_full) * scale
    min_area = g.min_area * scale * scale
    memo: dict[tuple[int, int], float] = {}

    def value(c: tuple[int, int]) -> float:
        if c not in memo:
            memo[c] = pooled_ncc([a], [b], c) if _area(a.shape, b.shape, c) >= min_area else -np.inf
        return memo[c]

    found = []
    for y, x in peaks:
        start = ((int(g.lo[0]) + y - to_full[0]) * scale, (int(g.lo[1]) + x - to_full[1]) * scale)
        sub, r, edge = climb(value, start, lo, hi)
        if np.isfinite(r) and not edge:
            found.append((r, sub))
    if not found:
        return PairMeasurement(None, _NAN, 0)
    nominal = (lo + hi) / 2.0
    best_r, sub = _choose(found, nominal, a.shape, b.shape)
    integer = np.round(sub).astype(int)
    compared = _area(a.shape, b.shape, (int(integer[0]), int(integer[1])))
    return PairMeasurement((float(-integer[1]), float(-integer[0])), best_r, compared,
                           (float(-sub[1]), float(-sub[0])), best_r)


def _choose(found: list[tuple[float, np.ndarray]], nominal: np.ndarray, shape_a: tuple[int, ...],
            shape_b: tuple[int, ...]) -> tuple[float, np.ndarray]:
    """The best candidate; among those the data cannot tell from it, the nearest to `nominal`."""
    best_r, best = max(found, key=lambda t: t[0])
    c = np.round(best).astype(int)
    noise = 1.0 / math.sqrt(max(_area(shape_a, shape_b, (int(c[0]), int(c[1]))), 1))
    tied = [(r, s) for r, s in found if r >= best_r - noise]
    r, s = min(tied, key=lambda t: float(np.linalg.norm(t[1] - nominal)))
    return r, s


def _area(shape_a: tuple[int, ...], shape_b: tuple[int, ...], c: tuple[int, int]) -> int:
    """Pixels compared at offset `c` between arrays of `shape_a` and `shape_b`."""
    ny = min(shape_a[0], shape_b[0] - c[0]) - max(0, -c[0])
    nx = min(shape_a[1], shape_b[1] - c[1]) - max(0, -c[1])
    return max(ny, 0) * max(nx, 0)
