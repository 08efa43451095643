"""Measuring one pair: coarse phase correlation with peak verification, then full-resolution refinement.

`measure_pair` is a pure function of the two tiles' data, the pair's geometry and the
`MatchSettings`, so its `PairMeasurement` can be stored and reused for the same inputs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from .correlate import (
    bandpass,
    bandpass_patch,
    climb,
    ncc_surface,
    phase_surface,
    pooled_ncc,
    quadratic_peak,
    top_peaks,
)
from .pairs import PairGeometry
from .tiles import reduce_tile

__all__ = ["MatchSettings", "PairMeasurement", "coarse_level", "measure_pair", "null_match", "coarse_match"]

_NAN = float("nan")
# Reasons a pair with a coarse match still yields no shift.
TOO_SMALL = "overlap too small to refine"
NO_PEAK = "refinement at full resolution found no clear peak"


@dataclass(frozen=True)
class MatchSettings:
    """Everything besides the pixels that decides a pair's measurement.

    Attributes
    ----------
    tile_shape : (int, int)
        ``(height, width)`` of the tiles at full resolution.
    scale : int
        Reduction of the coarse level (1: the strips are full resolution and no refinement runs).
    filter_sigma, highpass_size : float, int
        Band-pass (see :func:`~ofm_tiling.register.correlate.bandpass`); the box is twice
        `highpass_size` at full resolution.
    n_peaks : int
        Phase-correlation peaks verified by Pearson correlation.
    refine_patch, refine_patches : int
        Size (px) and number of the most textured full-resolution patches used for refinement.
    nominal : bool
        The positions are nominal (no stage error model): pairs and null comparisons are matched
        by the periodic-pattern rule of :mod:`ofm_tiling.register.nominal` instead.
    """

    tile_shape: tuple[int, int]
    scale: int
    filter_sigma: float = 1.0
    highpass_size: int = 9
    n_peaks: int = 5
    refine_patch: int = 256
    refine_patches: int = 2
    nominal: bool = False

    @property
    def refine_radius(self) -> int:
        """Half-size (px) of the full-resolution window searched around the coarse shift."""
        return 2 * self.scale


@dataclass(frozen=True)
class PairMeasurement:
    """What the pixels say about one pair, before any acceptance decision.

    Shifts are ``position[j] - position[i]`` as ``(dx, dy)`` in full-resolution pixels.

    Attributes
    ----------
    coarse_shift : (float, float) or None
        Shift found by the coarse search (sub-pixel when there is no coarse level); None when no
        candidate offset left enough overlap to compare.
    correlation : float
        Pearson correlation of the band-passed strips at the coarse shift.
    compared : int
        Pixels compared for `correlation` (at the coarse level).
    refined_shift : (float, float) or None
        Full-resolution sub-pixel shift; None without a coarse level or when refinement failed.
    fine_correlation : float
        Pooled correlation of the refinement patches at the refined shift (NaN when not refined).
    problem : str
        Why refinement failed (empty when it ran or was not needed).
    """

    coarse_shift: tuple[float, float] | None
    correlation: float
    compared: int
    refined_shift: tuple[float, float] | None = None
    fine_correlation: float = _NAN
    problem: str = ""

    @property
    def shift(self) -> tuple[float, float] | None:
        """The best shift measured: refined when available, else coarse."""
        return self.refined_shift if self.refined_shift is not None else self.coarse_shift


@dataclass(frozen=True)
class _PatchPlan:
    """Full-resolution refinement of one pair: integer shift (rows, cols) and patches of tile i."""

    shift: np.ndarray
    corners: list[tuple[int, int]]
    size: tuple[int, int]


def coarse_level(full: np.ndarray, settings: MatchSettings) -> np.ndarray:
    """The band-passed coarse level of a full-resolution grey tile; pairs' strips are cut from it."""
    return bandpass(reduce_tile(full, settings.scale), settings.filter_sigma, settings.highpass_size)


def _xy(shift_rc: np.ndarray) -> tuple[float, float]:
    return float(shift_rc[1]), float(shift_rc[0])


def measure_pair(strip_i: np.ndarray, strip_j: np.ndarray, geometry: PairGeometry, settings: MatchSettings,
                 full_i: np.ndarray | None = None, full_j: np.ndarray | None = None) -> PairMeasurement:
    """Measure the shift of a pair from its band-passed coarse strips and (to refine) the full tiles.

    Parameters
    ----------
    strip_i, strip_j : ndarray
        :func:`coarse_level` of tile i and tile j cut to ``geometry.rect_i`` / ``rect_j``.
    geometry : PairGeometry
    settings : MatchSettings
    full_i, full_j : ndarray, optional
        The full-resolution grey tiles; needed when ``settings.scale > 1``.
    """
    g = geometry
    c, r, n = coarse_match(strip_i, strip_j, g, settings.n_peaks)
    if c is None:
        return PairMeasurement(None, r, n)
    if settings.scale == 1:  # no coarse level: refine in place on the strips
        sub, _, edge = climb(lambda cc: pooled_ncc([strip_i], [strip_j], cc), c, g.lo, g.hi)
        return PairMeasurement(_xy(g.base - sub if not edge else g.base - np.array(c, float)), r, n)
    if full_i is None or full_j is None:
        raise ValueError("full_i and full_j are needed to refine when settings.scale > 1")
    coarse = _xy((g.base - np.array(c)) * float(settings.scale))
    plan = _plan_patches(strip_i, strip_j, g, c, settings)
    if plan is None:
        return PairMeasurement(coarse, r, n, problem=TOO_SMALL)
    fine = _refine(full_i, full_j, plan, settings)
    if fine is None:
        return PairMeasurement(coarse, r, n, problem=NO_PEAK)
    return PairMeasurement(coarse, r, n, _xy(fine[0]), fine[1])


def null_match(strip_i: np.ndarray, strip_j: np.ndarray, geometry: PairGeometry, n_peaks: int,
               flip: int = 0) -> tuple[float, int]:
    """Correlation and pixels compared of a registration attempt on strips that cannot overlap."""
    return coarse_match(strip_i, flipped(strip_j, flip), geometry, n_peaks)[1:]


_FLIPS = {1: lambda b: b[::-1, ::-1], 2: lambda b: b[::-1], 3: lambda b: b[:, ::-1]}


def flipped(image: np.ndarray, flip: int) -> np.ndarray:
    """A null comparison's second image, flipped as `ofm_tiling.register.pairs.NullComparison` says
    (0: as it is; 1: both axes; 2: rows; 3: columns), contiguous."""
    return np.ascontiguousarray(_FLIPS[flip](image)) if flip else image


def coarse_match(a: np.ndarray, b: np.ndarray, g: PairGeometry,
                 n_peaks: int) -> tuple[tuple[int, int] | None, float, int]:
    """Best strip offset in the window: phase-correlation peaks verified by Pearson correlation.

    Returns the offset ``c`` (B(u + c) = A(u)), its correlation and the number of pixels compared.
    """
    shape = (sfft.next_fast_len(max(a.shape[0], b.shape[0]), real=True),
             sfft.next_fast_len(max(a.shape[1], b.shape[1]), real=True))
    surface = phase_surface(a, b, shape)
    cy = np.arange(g.lo[0], g.hi[0] + 1)
    cx = np.arange(g.lo[1], g.hi[1] + 1)
    if len(cy) == 0 or len(cx) == 0:
        return None, _NAN, 0
    # Every offset in the window, wrap-around variants included: a window wider than the FFT
    # visits the same surface value at c and c + N, and both are checked on the real overlap.
    sub = surface[np.ix_(cy % shape[0], cx % shape[1])]
    ny = np.minimum(a.shape[0], b.shape[0] - cy) - np.maximum(0, -cy)
    nx = np.minimum(a.shape[1], b.shape[1] - cx) - np.maximum(0, -cx)
    area = np.clip(ny, 0, None)[:, None] * np.clip(nx, 0, None)[None, :]
    sub = np.where(area >= g.min_area, sub, -np.inf)
    best, best_r, best_n = None, -np.inf, 0
    for y, x in top_peaks(sub, n_peaks):
        c = (int(cy[y]), int(cx[x]))
        r = pooled_ncc([a], [b], c)
        if np.isfinite(r) and r > best_r:
            best, best_r, best_n = c, r, int(area[y, x])
    return best, (best_r if best is not None else _NAN), best_n


def _starts(lo: int, hi: int, size: int) -> np.ndarray:
    """Evenly spread starts of patches of `size` covering ``[lo, hi)``."""
    k = max(1, (hi - lo) // size)
    return np.round(np.linspace(lo, hi - size, k)).astype(int) if k > 1 else np.array([lo])


def _plan_patches(a: np.ndarray, b: np.ndarray, g: PairGeometry, c: tuple[int, int],
                  settings: MatchSettings) -> _PatchPlan | None:
    """Choose the most textured full-resolution patches of the overlap found at coarse level.

    Returns the integer full-resolution shift to refine and the top-left corners (tile-i pixels)
    of the patches, or None when the overlap is too small.
    """
    (h, w), scale, r_fine = settings.tile_shape, settings.scale, settings.refine_radius
    shift = (g.base - np.array(c)) * scale
    y0, y1 = max(0, shift[0]) + r_fine, min(h, shift[0] + h) - r_fine
    x0, x1 = max(0, shift[1]) + r_fine, min(w, shift[1] + w) - r_fine
    if y1 - y0 < 8 or x1 - x0 < 8:
        return None
    ph, pw = min(settings.refine_patch, y1 - y0), min(settings.refine_patch, x1 - x0)
    oi = np.array([g.rect_i[0].start, g.rect_i[1].start])
    cands = []
    for ys in _starts(y0, y1, ph):
        for xs in _starts(x0, x1, pw):
            # Block footprint in the coarse strips (A in tile i, B at the coarse offset c).
            ra = (slice(ys // scale - oi[0], -(-(ys + ph) // scale) - oi[0]),
                  slice(xs // scale - oi[1], -(-(xs + pw) // scale) - oi[1]))
            rb = (slice(max(ra[0].start + c[0], 0), max(ra[0].stop + c[0], 0)),
                  slice(max(ra[1].start + c[1], 0), max(ra[1].stop + c[1], 0)))
            ea, eb = a[max(ra[0].start, 0):ra[0].stop, max(ra[1].start, 0):ra[1].stop], b[rb]
            energy = min(float(np.mean(ea * ea)) if ea.size else 0.0, float(np.mean(eb * eb)) if eb.size else 0.0)
            cands.append((energy, int(ys), int(xs)))
    cands.sort(reverse=True)
    top = cands[0][0]
    # Small (corner) overlaps get fewer patches: they carry less weight and would cost as much.
    n_patches = int(np.clip(len(cands) // 4, 1, settings.refine_patches))
    cores = [(ys, xs) for e, ys, xs in cands[:n_patches] if e >= 0.05 * top] or [(cands[0][1], cands[0][2])]
    return _PatchPlan(shift.astype(int), cores, (ph, pw))


def _refine(full_i: np.ndarray, full_j: np.ndarray, plan: _PatchPlan,
            settings: MatchSettings) -> tuple[np.ndarray, float] | None:
    """Full-resolution shift (rows, cols) near the coarse result and its correlation, or None
    without a clear peak.

    Each patch of tile i is compared with every window of tile j within the refine radius of the
    coarse shift, and the pooled correlation surface is fitted to sub-pixel precision.
    """
    r = settings.refine_radius
    num, saa, sbb = np.zeros((2 * r + 1, 2 * r + 1)), 0.0, np.zeros((2 * r + 1, 2 * r + 1))
    for y, x in plan.corners:
        a = _filtered_patch(full_i, (y, x), plan.size, 0, settings)
        b = _filtered_patch(full_j, (y - int(plan.shift[0]), x - int(plan.shift[1])), plan.size, r, settings)
        c_ab, c_aa, c_bb = ncc_surface(a, b, r)
        num, saa, sbb = num + c_ab, saa + c_aa, sbb + c_bb
    ncc = num / np.sqrt(np.maximum(saa * sbb, 1e-30))
    py, px = (int(v) for v in np.unravel_index(int(np.argmax(ncc)), ncc.shape))
    if py in (0, 2 * r) or px in (0, 2 * r) or not np.isfinite(ncc[py, px]):
        return None     # the best match is not inside the window: coarse and fine disagree
    oy, ox = quadratic_peak(ncc[py - 1:py + 2, px - 1:px + 2])
    return np.asarray(plan.shift, float) - np.array([py - r + oy, px - r + ox]), float(ncc[py, px])


def _filtered_patch(image: np.ndarray, corner: tuple[int, int], size: tuple[int, int], margin: int,
                    settings: MatchSettings) -> np.ndarray:
    """Band-passed patch of `size` at `corner`, grown by `margin` px on every side, filtered as it
    would be inside the whole tile (the box is twice `highpass_size` at full resolution)."""
    (cy, cx), (ph, pw) = corner, size
    return bandpass_patch(image, (cy - margin, cx - margin), (ph + 2 * margin, pw + 2 * margin),
                          sigma=settings.filter_sigma, box=2 * settings.highpass_size)
