"""Pairwise registration of overlapping tiles, starting from stage-predicted positions.

Only pairs whose predicted overlap is meaningful are registered, and only on their predicted
overlap strips widened by a search margin for the stage error. Each pair is matched coarse to fine:

1. At reduced resolution (1/8 for 8 MP tiles, else 1/4; block means of the tile's one full decode,
   cheaper than a second, DCT-scaled decode because entropy decoding dominates either way) the
   band-passed strips are phase-correlated; the strongest peaks inside the search window
   (wrap-around variants included) are each verified with a Pearson correlation on the overlap
   they imply, and the best one wins.
2. The acceptance threshold is learned from the data: the same matching run on strips that cannot
   overlap (strip of one pair against the strip of a distant pair with the same geometry, or a
   flipped strip) gives a null distribution of chance correlations. Chance correlations shrink like
   one over the square root of the pixels compared, so the null is kept as
   ``correlation * sqrt(pixels)`` and each link needs the correlation that matches its own overlap
   (small corner overlaps need more); a shift far from the stage prediction is rejected too.
3. Pairs are refined at full resolution on a few textured patches of the overlap, in a small
   window around the coarse result, with a quadratic fit of the correlation surface; only the
   refined shifts of accepted pairs are used.

Each tile is decoded once, at full resolution, and streamed: the coarse level is reduced from it,
strips are cut out, and each link is matched and refined as soon as both its tiles are decoded
(acceptance, which needs the whole scan's statistics, is decided afterwards). A tile is dropped
once its last link has run, so memory holds about one row of tiles, whatever the scan's length.
"""
from __future__ import annotations

import math
import os
import threading
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
from PIL import Image
from scipy import fft as sfft
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .errors import OfmTilingError
from .imageio import read_luminance
from .linkrules import deviation_bound, deviations
from .placement import Criteria, Link

__all__ = [
    "TileImages", "JpegTiles", "ArrayTiles", "Link", "Registration",
    "bandpass", "candidate_pairs", "register",
]


# --------------------------------------------------------------------------------------------
# Tile sources


class TileImages(Protocol):
    """What registration reads: a sequence of same-sized grey tiles, optionally reduced."""

    def __len__(self) -> int: ...

    def gray(self, i: int, scale: int = 1) -> np.ndarray:
        """Tile `i` as a uint8 or float32 luminance array of shape ``(ceil(h / scale), ceil(w / scale))``."""
        ...


class JpegTiles:
    """Tiles read from image files as uint8 luminance (:func:`ofm_tiling.imageio.read_luminance`).

    Reduced decodes use libjpeg's DCT scaling, so ``scale`` should be 1, 2, 4 or 8.

    Parameters
    ----------
    paths : sequence of path-like
        One file per tile, in the order of the positions.
    cache_size : int
        Number of decoded images kept (least recently used are dropped). Registration reads each
        tile once; the cache serves callers that come back to a tile.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], *, cache_size: int = 2):
        self.paths = [os.fspath(p) for p in paths]
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    def gray(self, i: int, scale: int = 1) -> np.ndarray:
        key = (int(i), int(scale))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        image = read_luminance(self.paths[i], int(scale))
        image.flags.writeable = False  # shared through the cache
        if self.cache_size > 0:
            with self._lock:
                self._cache[key] = image
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return image


def _block_mean(image: np.ndarray, scale: int) -> np.ndarray:
    """Mean over ``scale x scale`` blocks; partial blocks at the far edges average what exists."""
    out = image.astype(np.float32, copy=False)
    for axis in (0, 1):
        n = out.shape[axis]
        starts = np.arange(0, n, scale)
        sums = np.add.reduceat(out, starts, axis=axis, dtype=np.float64)
        counts = np.minimum(starts + scale, n) - starts
        counts = counts[:, None] if axis == 0 else counts[None, :]
        out = (sums / counts).astype(np.float32)
    return out


def _reduce(image: np.ndarray, scale: int) -> np.ndarray:
    """`image` reduced `scale` times by block means, as float32 (size rounded up, like libjpeg)."""
    if scale == 1:
        return image.astype(np.float32, copy=False)
    if image.dtype == np.uint8:  # Pillow's box reduction: the same means in C, without the GIL
        return np.asarray(Image.fromarray(image).reduce(scale)).astype(np.float32)
    return _block_mean(image, scale)


class ArrayTiles:
    """Tiles held in memory (tests, or images already decoded).

    Reduced versions are block means, so their size is ``ceil(h / scale) x ceil(w / scale)`` like a
    DCT-scaled JPEG decode. Colour images are converted to luminance (ITU-R 601, as Pillow's "L").

    Parameters
    ----------
    images : sequence of ndarray
        2-D grey or (H, W, 3) colour tiles, all of the same size.
    """

    def __init__(self, images: Sequence[np.ndarray]):
        self.images = [np.asarray(im) for im in images]

    def __len__(self) -> int:
        return len(self.images)

    def gray(self, i: int, scale: int = 1) -> np.ndarray:
        image = self.images[i]
        if image.ndim == 3:
            image = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        if scale <= 1:
            return image.astype(np.float32, copy=True)
        return _block_mean(image, int(scale))


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class Registration:
    """All links of a scan and the data-learned acceptance criteria.

    Attributes
    ----------
    links : list of Link
    threshold : float
        Correlation needed for acceptance by a link of median overlap (each link's own value is
        ``Link.threshold``).
    null_correlations : ndarray
        Correlations reached by chance between strips that do not overlap.
    max_deviation : float
        Largest accepted distance (px) between a measured shift and the stage prediction corrected
        by `stage_correction`.
    coarse_scale : int
        Reduction factor used for the coarse search (1 means no coarse level).
    search_radius : float
        Half-size (px) of the search window around the stage prediction.
    stage_correction : ndarray
        2x2 matrix ``M`` of the systematic stage error learned from confident links: the corrected
        prediction of a shift ``d`` is ``d + M @ d``.
    null_significance : ndarray
        The null comparisons as ``correlation * sqrt(pixels compared)``: chance correlations shrink
        like one over the square root of the overlap, so this scale is common to small (corner) and
        large (side) overlaps.
    significance_threshold : float
        The `null_quantile` of `null_significance`. A link is accepted when its correlation is at
        least ``max(min_correlation, significance_threshold / sqrt(pixels compared))`` and its shift
        is within `max_deviation` of the corrected stage prediction.
    """

    links: list[Link]
    threshold: float
    null_correlations: np.ndarray
    max_deviation: float
    coarse_scale: int = 1
    search_radius: float = 0.0
    stage_correction: np.ndarray = field(default_factory=lambda: np.zeros((2, 2)))
    null_significance: np.ndarray = field(default_factory=lambda: np.zeros(0))
    significance_threshold: float = 0.0

    @property
    def criteria(self) -> Criteria:
        """The acceptance criteria in the backends' common form."""
        return Criteria(self.threshold, self.max_deviation, self.significance_threshold, self.search_radius,
                        self.coarse_scale, self.null_correlations, self.null_significance, self.stage_correction)


# --------------------------------------------------------------------------------------------
# Pairs


def _as_positions(positions: Any) -> np.ndarray:
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
    pos = _as_positions(positions)
    h, w = (float(v) for v in tile_shape)
    if len(pos) < 2:
        return []
    # Chebyshev ball in tile units: only tiles closer than one tile size on both axes can overlap.
    tree = cKDTree(pos / (w, h))
    pairs = tree.query_pairs(1.0, p=np.inf, output_type="ndarray")
    if len(pairs) == 0:
        return []
    pairs = np.sort(pairs, axis=1)
    ov = np.array([w, h]) - np.abs(pos[pairs[:, 1]] - pos[pairs[:, 0]])
    keep = (ov > 0).all(axis=1) & (ov.prod(axis=1) >= min_overlap * w * h)
    pairs = pairs[keep]
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    return [(int(i), int(j)) for i, j in pairs]


# --------------------------------------------------------------------------------------------
# Image primitives


def bandpass(image: np.ndarray, sigma: float = 1.0, size: int = 9) -> np.ndarray:
    """Band-pass filter: Gaussian smoothing minus a local (box) mean.

    The Gaussian suppresses pixel noise and JPEG block edges; subtracting the box mean removes
    illumination and vignetting so that correlation is driven by specimen texture (plain phase
    correlation of noisy tissue fails without this).
    """
    low = image.astype(np.float32, copy=False)
    if sigma > 0:
        low = ndi.gaussian_filter(low, sigma, truncate=2.0, mode="nearest")
    return low - ndi.uniform_filter(low, size=max(int(size), 3), mode="nearest")


@lru_cache(maxsize=256)
def _ramp(n: int, width: int) -> np.ndarray:
    t = min(width, n // 4)
    out = np.ones(n, np.float32)
    if t > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(t) + 0.5) / t)
        out[:t] = r
        out[n - t:] = r[::-1]
    out.flags.writeable = False
    return out


def _taper(a: np.ndarray, width: int = 8) -> np.ndarray:
    """Soften the borders so the crop edges do not dominate the phase correlation."""
    return a * _ramp(a.shape[0], width)[:, None] * _ramp(a.shape[1], width)[None, :]


def _phase_surface(pairs: Sequence[tuple[np.ndarray, np.ndarray]], shape: tuple[int, int]) -> np.ndarray:
    """Phase correlation summed over pairs; the peak is at ``c`` (mod shape) where B(u + c) = A(u)."""
    acc = None
    for a, b in pairs:
        fa = sfft.rfft2(_taper(a), s=shape, workers=1)
        fb = sfft.rfft2(_taper(b), s=shape, workers=1)
        cross = fb * fa.conj()
        mag = np.abs(cross)
        cross /= np.maximum(mag, 1e-6 * (float(mag.mean()) + 1e-30))
        acc = cross if acc is None else acc + cross
    return sfft.irfft2(acc, s=shape, workers=1)


def _overlap(sa: int, sb: int, c: int) -> tuple[slice, slice]:
    """Slices of A and B compared at shift ``c`` (B(u + c) = A(u)) along one axis."""
    lo, hi = max(0, -c), min(sa, sb - c)
    return slice(lo, max(lo, hi)), slice(lo + c, max(lo, hi) + c)


def _ncc_terms(a: np.ndarray, b: np.ndarray, c: tuple[int, int]) -> tuple[float, float, float, int]:
    """Centred cross and auto products of the overlap of A and B at shift ``c``."""
    ya, yb = _overlap(a.shape[0], b.shape[0], c[0])
    xa, xb = _overlap(a.shape[1], b.shape[1], c[1])
    sa, sb = a[ya, xa], b[yb, xb]
    n = sa.size
    if n < 4:
        return 0.0, 0.0, 0.0, 0
    # Raw sums on the strided views (no copies); band-passed data are near zero-mean, so removing
    # the means afterwards loses no precision.
    ma, mb = float(sa.sum(dtype=np.float64)) / n, float(sb.sum(dtype=np.float64)) / n
    sab = float(np.einsum("ij,ij->", sa, sb)) - n * ma * mb
    saa = float(np.einsum("ij,ij->", sa, sa)) - n * ma * ma
    sbb = float(np.einsum("ij,ij->", sb, sb)) - n * mb * mb
    return sab, max(saa, 0.0), max(sbb, 0.0), n


def _ncc_surface(a: np.ndarray, b: np.ndarray, r: int) -> tuple[np.ndarray, float, np.ndarray]:
    """Exact Pearson terms of A against every window of B at offsets 0..2r (B is A's size + 2r).

    Returns the cross term and the two centred sums of squares for each offset, so several patches
    can be pooled: ``ncc = sum(cross) / sqrt(sum(saa) * sum(sbb))``. The cross-correlation is done
    with FFTs (A zero-padded: no wrap-around for these offsets), the window sums of B with an
    integral image.
    """
    ph, pw = a.shape
    shape = (sfft.next_fast_len(ph + 2 * r, real=True), sfft.next_fast_len(pw + 2 * r, real=True))
    ac = a - a.mean()
    cross = sfft.irfft2(sfft.rfft2(ac, s=shape, workers=1).conj() * sfft.rfft2(b, s=shape, workers=1),
                        s=shape, workers=1)[:2 * r + 1, :2 * r + 1]
    s1, s2 = _window_sums(b, ph, pw, r), _window_sums(b * b, ph, pw, r)
    sbb = s2 - s1 ** 2 / (ph * pw)
    return cross.astype(np.float64), float(np.dot(ac.ravel(), ac.ravel())), sbb


def _window_sums(v: np.ndarray, ph: int, pw: int, r: int) -> np.ndarray:
    """Sums of ``v`` over ph x pw windows at offsets 0..2r (running sums: one pass over v)."""
    rows = np.empty((2 * r + 1, v.shape[1]))
    rows[0] = v[:ph].sum(axis=0, dtype=np.float64)
    rows[1:] = rows[0] + np.cumsum(v[ph:ph + 2 * r] - v[:2 * r], axis=0, dtype=np.float64)
    out = np.empty((2 * r + 1, 2 * r + 1))
    out[:, 0] = rows[:, :pw].sum(axis=1)
    out[:, 1:] = out[:, :1] + np.cumsum(rows[:, pw:pw + 2 * r] - rows[:, :2 * r], axis=1)
    return out


def _pooled_ncc(As: Sequence[np.ndarray], Bs: Sequence[np.ndarray], c: tuple[int, int]) -> float:
    """Pearson correlation over several patch pairs at the same shift (each patch mean removed)."""
    sab = saa = sbb = 0.0
    for a, b in zip(As, Bs):
        t = _ncc_terms(a, b, c)
        sab, saa, sbb = sab + t[0], saa + t[1], sbb + t[2]
    den = math.sqrt(saa * sbb)
    return sab / den if den > 0 else float("nan")


# Least-squares fit of z = a + b y + c x + d y^2 + e xy + f x^2 on the 3x3 neighbourhood.
_YY, _XX = np.mgrid[-1:2, -1:2]
_QUAD = np.linalg.pinv(np.stack(
    [np.ones(9), _YY.ravel(), _XX.ravel(), _YY.ravel() ** 2, (_YY * _XX).ravel(), _XX.ravel() ** 2],
    axis=1))


def _quadratic_peak(z: np.ndarray) -> tuple[float, float]:
    """Sub-pixel offset of the maximum of a 3x3 neighbourhood (centre = 0)."""
    if not np.isfinite(z).all():
        return 0.0, 0.0
    _, b, c, d, e, f = _QUAD @ z.ravel()
    hess = np.array([[2 * d, e], [e, 2 * f]])
    if d < 0 and f < 0 and np.linalg.det(hess) > 0:
        oy, ox = np.linalg.solve(hess, [-b, -c])
    else:  # saddle or flat: fall back to one parabola per axis through the centre
        def vertex(m, z0, p):
            den = m - 2 * z0 + p
            return 0.5 * (m - p) / den if den < 0 else 0.0
        oy, ox = vertex(z[0, 1], z[1, 1], z[2, 1]), vertex(z[1, 0], z[1, 1], z[1, 2])
    return float(np.clip(oy, -1, 1)), float(np.clip(ox, -1, 1))


def _climb(f: Callable[[tuple[int, int]], float], start: tuple[int, int], lo: np.ndarray, hi: np.ndarray,
           max_steps: int = 12) -> tuple[np.ndarray, float, bool]:
    """Hill-climb an integer surface to a local maximum, then fit it to sub-pixel.

    Returns the sub-pixel position, the value at the integer maximum, and whether the maximum lies
    on the border of the allowed window (then it is not a genuine peak).
    """
    cache: dict[tuple[int, int], float] = {}

    def value(p: tuple[int, int]) -> float:
        if p not in cache:
            inside = lo[0] <= p[0] <= hi[0] and lo[1] <= p[1] <= hi[1]
            v = f(p) if inside else -np.inf
            cache[p] = v if np.isfinite(v) else -np.inf
        return cache[p]

    c = (int(start[0]), int(start[1]))
    for _ in range(max_steps):
        z = np.array([[value((c[0] + dy, c[1] + dx)) for dx in (-1, 0, 1)] for dy in (-1, 0, 1)])
        k = int(np.argmax(z))
        if k == 4:
            break
        c = (c[0] + k // 3 - 1, c[1] + k % 3 - 1)
    z = np.array([[value((c[0] + dy, c[1] + dx)) for dx in (-1, 0, 1)] for dy in (-1, 0, 1)])
    on_edge = c[0] in (lo[0], hi[0]) or c[1] in (lo[1], hi[1])
    off = _quadratic_peak(z) if not on_edge else (0.0, 0.0)
    return np.array(c, float) + off, float(z[1, 1]), on_edge


def _top_peaks(sub: np.ndarray, n: int, radius: int = 2) -> list[tuple[int, int]]:
    """Indices of the `n` strongest peaks, suppressing the neighbourhood of each one found."""
    sub = sub.copy()
    out = []
    for _ in range(n):
        k = int(np.argmax(sub))
        y, x = divmod(k, sub.shape[1])
        if not np.isfinite(sub[y, x]):
            break
        out.append((y, x))
        sub[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1] = -np.inf
    return out


# --------------------------------------------------------------------------------------------
# Pair geometry and matching


@dataclass
class _Geometry:
    """Where a pair's strips are cut (registration resolution, (row, col)) and where to search."""

    rect_i: tuple[slice, slice]   # strip in tile i
    rect_j: tuple[slice, slice]   # strip in tile j
    base: np.ndarray              # origin_i - origin_j: shift = base - c, c the strip-to-strip offset
    lo: np.ndarray                # allowed c, inclusive
    hi: np.ndarray
    min_area: float               # smallest overlap (px) a candidate may compare


def _pair_geometry(d_rc: np.ndarray, shape: tuple[int, int], radius: float, min_fraction: float) -> _Geometry:
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
    return _Geometry(tuple(rect_i), tuple(rect_j), np.array(base), np.array(lo), np.array(hi),
                     max(16.0, min_fraction * lengths[0] * lengths[1]))


def _match(a: np.ndarray, b: np.ndarray, g: _Geometry,
           n_peaks: int) -> tuple[tuple[int, int] | None, float, int]:
    """Best strip offset in the window: phase-correlation peaks verified by Pearson correlation.

    Returns the offset ``c`` (B(u + c) = A(u)), its correlation and the number of pixels compared.
    """
    shape = (sfft.next_fast_len(max(a.shape[0], b.shape[0]), real=True),
             sfft.next_fast_len(max(a.shape[1], b.shape[1]), real=True))
    surface = _phase_surface([(a, b)], shape)
    cy = np.arange(g.lo[0], g.hi[0] + 1)
    cx = np.arange(g.lo[1], g.hi[1] + 1)
    if len(cy) == 0 or len(cx) == 0:
        return None, float("nan"), 0
    # Every offset in the window, wrap-around variants included: a window wider than the FFT
    # visits the same surface value at c and c + N, and both are checked on the real overlap.
    sub = surface[np.ix_(cy % shape[0], cx % shape[1])]
    ny = np.minimum(a.shape[0], b.shape[0] - cy) - np.maximum(0, -cy)
    nx = np.minimum(a.shape[1], b.shape[1] - cx) - np.maximum(0, -cx)
    area = np.clip(ny, 0, None)[:, None] * np.clip(nx, 0, None)[None, :]
    sub = np.where(area >= g.min_area, sub, -np.inf)
    best, best_r, best_n = None, -np.inf, 0
    for y, x in _top_peaks(sub, n_peaks):
        c = (int(cy[y]), int(cx[x]))
        r = _pooled_ncc([a], [b], c)
        if np.isfinite(r) and r > best_r:
            best, best_r, best_n = c, r, int(area[y, x])
    return best, (best_r if best is not None else float("nan")), best_n


def _plan_patches(a: np.ndarray, b: np.ndarray, g: _Geometry, c: tuple[int, int], scale: int,
                  tile_shape: tuple[int, int], r_fine: int, patch: int, n_patches: int):
    """Choose the most textured full-resolution patches of the overlap found at coarse level.

    Returns ``(shift_rc, cores, (ph, pw))``: the integer full-resolution shift to refine and the
    top-left corners (tile-i pixels) of the patches, or None when the overlap is too small.
    """
    h, w = tile_shape
    shift = (g.base - np.array(c)) * scale
    y0, y1 = max(0, shift[0]) + r_fine, min(h, shift[0] + h) - r_fine
    x0, x1 = max(0, shift[1]) + r_fine, min(w, shift[1] + w) - r_fine
    if y1 - y0 < 8 or x1 - x0 < 8:
        return None
    ph, pw = min(patch, y1 - y0), min(patch, x1 - x0)

    def starts(lo, hi, size):
        k = max(1, (hi - lo) // size)
        return np.round(np.linspace(lo, hi - size, k)).astype(int) if k > 1 else np.array([lo])

    oi = np.array([g.rect_i[0].start, g.rect_i[1].start])
    cands = []
    for ys in starts(y0, y1, ph):
        for xs in starts(x0, x1, pw):
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
    n_patches = int(np.clip(len(cands) // 4, 1, n_patches))
    cores = [(ys, xs) for e, ys, xs in cands[:n_patches] if e >= 0.05 * top] or [cands[0][1:]]
    return shift.astype(int), cores, (ph, pw)


def _choose_null_partners(pairs: np.ndarray, pos: np.ndarray, tile_shape: tuple[int, int], radius: float,
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


# --------------------------------------------------------------------------------------------
# Streaming: decode each tile once, cut what the pending work needs, drop the tile.


class _Progress:
    def __init__(self, progress, total: int):
        self.progress, self.total, self.done = progress, total, 0
        if progress is not None and hasattr(progress, "update") and getattr(progress, "total", 0) is None:
            progress.total = total
            if hasattr(progress, "refresh"):
                progress.refresh()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.progress is None or n == 0:
            return
        if hasattr(self.progress, "update"):
            self.progress.update(n)
        else:
            self.progress(self.done, self.total)


def _stream(pool: ThreadPoolExecutor, order: Sequence[int], load: Callable[[int], dict],
            units: Sequence[tuple], compute: Callable[..., Any], ahead: int,
            on_tile: Callable[[], None]) -> list:
    """Run ``compute(u, *arrays)`` for every unit as soon as the arrays (keys) it needs are loaded.

    ``load(tile)`` returns ``{key: array}`` for the keys that tile provides. Arrays are released as
    soon as no pending unit needs them. The next tile is loaded only while fewer than
    ``4 * ahead`` units are waiting to run, so decoding cannot race ahead of the computations
    (each of which holds its arrays) and memory stays bounded however long the scan.
    """
    waiting = [len(set(keys)) for keys in units]
    users: dict[Any, list[int]] = defaultdict(list)
    refs: Counter = Counter()
    for u, keys in enumerate(units):
        for key in set(keys):
            users[key].append(u)
            refs[key] += 1
    store: dict[Any, Any] = {}
    futures = []
    queue: deque = deque()
    tiles = iter(order)

    running: deque = deque()

    def submit_next() -> None:
        k = next(tiles, None)
        if k is not None:
            while len(running) >= 4 * max(1, ahead):
                running.popleft().result()
            queue.append(pool.submit(load, k))

    for _ in range(max(1, ahead)):
        submit_next()
    while queue:
        arrays = queue.popleft().result()
        submit_next()
        for key, arr in arrays.items():
            if refs[key] > 0:
                store[key] = arr
        for key in arrays:
            for u in users.get(key, ()):
                waiting[u] -= 1
                if waiting[u] == 0:
                    keys = units[u]
                    futures.append((u, pool.submit(compute, u, *[store[k] for k in keys])))
                    running.append(futures[-1][1])
                    for k in set(keys):
                        refs[k] -= 1
                        if refs[k] == 0:
                            del store[k]
        on_tile()
    results: list = [None] * len(units)
    for u, fut in futures:
        results[u] = fut.result()
    return results


# --------------------------------------------------------------------------------------------
# Registration


# Default search radius as a fraction of the (median) narrow side of the predicted overlaps.
_RADIUS_FRACTION = 0.75


def register(
    tiles: TileImages,
    positions: np.ndarray,
    *,
    tile_shape: tuple[int, int],
    min_overlap: float = 0.05,
    max_deviation: float | None = None,
    search_radius: float | None = None,
    coarse_scale: int | None = None,
    filter_sigma: float = 1.0,
    highpass_size: int = 9,
    n_peaks: int = 5,
    min_correlation: float = 0.1,
    null_quantile: float = 0.99,
    n_null: int = 100,
    refine_patch: int = 256,
    refine_patches: int = 2,
    workers: int = 2,
    progress: Any = None,
    pairs: Sequence[tuple[int, int]] | None = None,
) -> Registration:
    """Measure the shift between every pair of overlapping tiles.

    Parameters
    ----------
    tiles : TileImages
        Grey tiles, in the order of `positions`.
    positions : (N, 2) array_like
        Stage-predicted top-left corners ``(x, y)`` in pixels.
    tile_shape : (int, int)
        ``(height, width)`` of every tile at full resolution.
    min_overlap : float
        Minimum predicted overlap (fraction of tile area) for a pair to be registered.
    max_deviation : float, optional
        Largest accepted distance (px) between a measured shift and the (systematically corrected)
        stage prediction. Default: learned from confident links (3x their 90th percentile), clamped
        between ``max(4 * coarse_scale, 1 % of the tile side)`` and the search window.
    search_radius : float, optional
        How far (px, per axis) a shift may be from the stage prediction. Default: 3/4 of the median
        narrow side of the predicted overlaps (beyond that, little overlap would be left to compare).
    coarse_scale : int, optional
        Reduction for the coarse search (1, 2, 4 or 8); lowered automatically when the overlap
        strips would become narrower than 24 px. 1 registers at full resolution directly.
        Default: 8 for tiles whose shorter side is at least 2048 px (8 MP camera images: the
        coarse level is then ~300 px high, plenty of tissue texture, at a quarter of the cost of
        1/4 scale), else 4.
    filter_sigma, highpass_size : float, int
        Band-pass before correlating: Gaussian sigma (px) and the size (px) of the box whose mean
        is subtracted at the coarse level (twice that at full resolution).
    n_peaks : int
        Phase-correlation peaks verified by Pearson correlation.
    min_correlation : float
        Floor of the learned acceptance threshold (a correlation).
    null_quantile : float
        Quantile of the null comparisons (as ``correlation * sqrt(pixels compared)``) that a link
        must reach; see :class:`Registration`.
    n_null : int
        Number of null comparisons between distant strips (several per pair in small scans; flipped
        strips top it up to 32 when the scan is too small for distant strips).
    refine_patch, refine_patches : int
        Size (px) and number of the most textured full-resolution patches used for refinement.
    workers : int
        Threads; decoding, filtering and FFTs release the GIL.
    progress : callable or tqdm-like, optional
        ``progress(n_done, n_total)`` or an object with ``update(n)``, advanced per tile decode.
    pairs : sequence of (int, int), optional
        Pairs to register instead of :func:`candidate_pairs`.

    Returns
    -------
    Registration
        Every link (accepted or with the reason for rejection) and the learned criteria.
    """
    pos = _as_positions(positions)
    if len(tiles) != len(pos):
        raise ValueError(f"{len(tiles)} tiles but {len(pos)} positions")
    h, w = int(tile_shape[0]), int(tile_shape[1])
    pairs_list = candidate_pairs(pos, (h, w), min_overlap=min_overlap) if pairs is None else \
        [(min(int(i), int(j)), max(int(i), int(j))) for i, j in pairs]
    if not pairs_list:
        return Registration([], float(min_correlation), np.zeros(0), float(max_deviation or 0.0))
    pair_arr = np.array(pairs_list, dtype=int)
    pred = pos[pair_arr[:, 1]] - pos[pair_arr[:, 0]]                       # (dx, dy)
    ov = np.array([w, h]) - np.abs(pred)                                   # (ow, oh)
    narrow = float(np.median(ov.min(axis=1)))
    radius = float(search_radius) if search_radius is not None else max(4.0, _RADIUS_FRACTION * narrow)
    scale = max(1, int(coarse_scale)) if coarse_scale is not None else (8 if min(h, w) >= 2048 else 4)
    while scale > 1 and narrow / scale < 24:
        scale //= 2
    shape_c = (-(-h // scale), -(-w // scale))
    r_fine = 2 * scale
    geoms = [_pair_geometry(p[::-1] / scale, shape_c, radius / scale, 0.25) for p in pred]
    paths = getattr(tiles, "paths", None)

    # Work units: links, then null comparisons (coarse only).
    n_links = len(pairs_list)
    units: list[tuple] = [(("i", p), ("j", p)) for p in range(n_links)]
    null_specs: list[tuple[int, int, int]] = []   # (p, q, flip) ; flip 0: none
    for p, q in _choose_null_partners(pair_arr, pos, (h, w), radius, n_null):
        null_specs.append((p, q, 0))
    # Too small a scan for distant strips: flipped strips have the same statistics and no overlap.
    flipped = [(p, p, f) for f in (1, 2, 3) for p in range(n_links)]
    null_specs += flipped[:max(0, 32 - len(null_specs))]
    units += [(("i", p), ("j", q)) for p, q, _ in null_specs]

    tile_keys: dict[int, list] = defaultdict(list)
    for p, (i, j) in enumerate(pairs_list):
        tile_keys[i].append(("i", p))
        tile_keys[j].append(("j", p))
    order = sorted(tile_keys)
    refine = scale > 1
    if refine:  # link units also hold both full-resolution tiles, to refine while they are decoded
        units[:n_links] = [keys + (("full", i), ("full", j)) for keys, (i, j) in zip(units, pairs_list)]
    reporter = _Progress(progress, len(order))

    def load(k: int) -> dict:
        # One decode per tile: the coarse level is reduced from it, and the tile itself stays (as
        # decoded, uint8 for JPEGs) until the links that refine on it have run.
        full = tiles.gray(k, 1)
        want = (h, w)
        if full.shape != want:
            raise OfmTilingError(paths[k] if paths else None,
                                 f"tile {k} is {full.shape[1]}x{full.shape[0]} px, expected "
                                 f"{want[1]}x{want[0]} (all tiles must have the same size)")
        filt = bandpass(_reduce(full, scale), filter_sigma, highpass_size)
        out = {key: filt[geoms[key[1]].rect_i if key[0] == "i" else geoms[key[1]].rect_j].copy()
               for key in tile_keys[k]}
        if refine:
            out[("full", k)] = full
        return out

    flips = {1: lambda b: b[::-1, ::-1], 2: lambda b: b[::-1], 3: lambda b: b[:, ::-1]}

    def compute(u: int, a: np.ndarray, b: np.ndarray, *full: np.ndarray):
        if u >= n_links:
            p, _, flip = null_specs[u - n_links]
            if flip:
                b = np.ascontiguousarray(flips[flip](b))
            return _match(a, b, geoms[p], n_peaks)[1:]
        g = geoms[u]
        c, r, n = _match(a, b, g, n_peaks)
        if c is None:
            return None, r, n, None, None
        if not refine:  # no coarse level: refine in place on the strips
            sub, _, edge = _climb(lambda cc: _pooled_ncc([a], [b], cc), c, g.lo, g.hi)
            return (g.base - sub if not edge else g.base - np.array(c, float)), r, n, None, None
        # Refined now, accepted or not: cheaper than decoding the tiles again once acceptance is
        # known (the threshold needs every link's coarse correlation first).
        plan = _plan_patches(a, b, g, c, scale, (h, w), r_fine, refine_patch, refine_patches)
        fine = None if plan is None else _refine(*full, plan, r_fine, filter_sigma, 2 * highpass_size)
        return (g.base - np.array(c)) * float(scale), r, n, plan, fine

    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        results = _stream(pool, order, load, units, compute, max(1, workers) + 1, reporter.advance)
    coarse = results[:n_links]
    null = np.array([v for v in results[n_links:] if np.isfinite(v[0])], float).reshape(-1, 2)
    null_corr, null_sig = null[:, 0], null[:, 0] * np.sqrt(null[:, 1])

    shift_rc = np.full((n_links, 2), np.nan)
    corr = np.full(n_links, np.nan)
    compared = np.zeros(n_links)
    for p, res in enumerate(coarse):
        corr[p], compared[p] = res[1], res[2]
        if res[0] is not None:
            shift_rc[p] = res[0]
    # Chance correlations shrink like 1/sqrt(pixels compared), so the null is learned on
    # r * sqrt(n) (one threshold fits side and corner overlaps alike) and turned back into the
    # correlation each link needs for its own overlap; min_correlation is a floor on top.
    sig_threshold = float(np.quantile(null_sig, null_quantile)) if len(null_sig) else 0.0
    needed = np.maximum(min_correlation, sig_threshold / np.sqrt(np.maximum(compared, 1)))
    threshold = float(np.median(needed))
    measured = shift_rc[:, ::-1]                                       # (dx, dy)
    confident = np.isfinite(corr) & (corr >= needed)
    low = max(4.0 * scale, 0.01 * max(h, w))
    high = radius * math.sqrt(2)
    bound = deviation_bound(pred[confident], measured[confident], low=low, high=high)
    m = bound.stage_correction
    max_dev = bound.max_deviation if max_deviation is None else float(max_deviation)
    deviation = deviations(pred, measured, m)

    reasons = [""] * n_links
    for p in range(n_links):
        if not np.isfinite(corr[p]) or not np.isfinite(deviation[p]):
            reasons[p] = "no overlap left to compare"
        elif corr[p] < needed[p]:
            reasons[p] = (f"correlation {corr[p]:.3f} below the {needed[p]:.3f} needed for chance "
                          f"not to explain it ({int(compared[p])} px compared)")
        elif deviation[p] > max_dev:
            reasons[p] = f"{deviation[p]:.1f} px from the stage prediction (limit {max_dev:.1f} px)"
        elif refine and coarse[p][3] is None:
            reasons[p] = "overlap too small to refine"
        elif refine and coarse[p][4] is None:
            reasons[p] = "refinement at full resolution found no clear peak"

    fine_corr = np.full(n_links, np.nan)
    for p in range(n_links):
        if refine and not reasons[p]:
            shift_rc[p], fine_corr[p] = coarse[p][4]

    links = []
    for p, (i, j) in enumerate(pairs_list):
        ok = not reasons[p]
        sh = None if not np.isfinite(shift_rc[p]).all() else (float(shift_rc[p, 1]), float(shift_rc[p, 0]))
        links.append(Link(i, j, (float(pred[p, 0]), float(pred[p, 1])), sh, float(corr[p]), ok,
                          "accepted" if ok else reasons[p], (int(round(ov[p, 0])), int(round(ov[p, 1]))),
                          float(fine_corr[p]), float(needed[p])))
    return Registration(links, threshold, null_corr, float(max_dev), scale, radius, m, null_sig,
                        sig_threshold)


def _refine(full_i: np.ndarray, full_j: np.ndarray, plan, r: int, sigma: float, box: int):
    """Full-resolution shift of a link near its coarse result, or None without a clear peak.

    `plan` comes from :func:`_plan_patches`; each patch of tile i is compared with every window
    of tile j within `r` px of the coarse shift, and the pooled correlation surface is fitted to
    sub-pixel precision.
    """
    h, w = full_i.shape
    shift, cores, (ph, pw) = plan
    border = int(math.ceil(2 * sigma)) + box // 2 + 1     # filter support, so patches filter cleanly
    num = saa = sbb = 0.0
    for y, x in cores:
        pieces = []
        for img, (cy, cx), extra in ((full_i, (y, x), border), (full_j, (y - shift[0], x - shift[1]), border + r)):
            y0, x0 = max(0, cy - extra), max(0, cx - extra)
            y1, x1 = min(h, cy + ph + extra), min(w, cx + pw + extra)
            pieces.append((bandpass(img[y0:y1, x0:x1], sigma, box), cy - y0, cx - x0))
        (fa, ay, ax), (fb, by, bx) = pieces
        c_ab, c_aa, c_bb = _ncc_surface(fa[ay:ay + ph, ax:ax + pw], fb[by - r:by + ph + r, bx - r:bx + pw + r], r)
        num, saa, sbb = num + c_ab, saa + c_aa, sbb + c_bb
    ncc = num / np.sqrt(np.maximum(saa * sbb, 1e-30))
    y, x = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
    if y in (0, 2 * r) or x in (0, 2 * r) or not np.isfinite(ncc[y, x]):
        return None     # the best match is not inside the window: coarse and fine disagree
    oy, ox = _quadratic_peak(ncc[y - 1:y + 2, x - 1:x + 2])
    return np.asarray(shift, float) - np.array([y - r + oy, x - r + ox]), float(ncc[y, x])
