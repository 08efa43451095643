"""Correlation primitives: band-pass, phase correlation, peak picking, pooled NCC, sub-pixel fits.

The NCC here works on strided views and pools several patches (``sum(cross) / sqrt(sum(aa) *
sum(bb))``), which registration's inner loops need; a plain Pearson correlation of two arrays is
:func:`ofm_tiling.pixels.ncc`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

from ..pixels import raised_cosine

__all__ = [
    "bandpass", "bandpass_patch", "bandpass_reach", "phase_surface", "pooled_ncc", "ncc_surface", "ncc_window",
    "quadratic_peak", "climb", "top_peaks",
]


# `bandpass`'s Gaussian is cut off at this many sigmas (radius ``int(_TRUNCATE * sigma + 0.5)``, as ndimage's).
_TRUNCATE = 2.0


def bandpass(image: np.ndarray, sigma: float = 1.0, size: int = 9) -> np.ndarray:
    """Band-pass filter: Gaussian smoothing minus a local (box) mean.

    The Gaussian suppresses pixel noise and JPEG block edges; subtracting the box mean removes
    illumination and vignetting so that correlation is driven by specimen texture (plain phase
    correlation of noisy tissue fails without this).
    """
    low = image.astype(np.float32, copy=False)
    if sigma > 0:
        low = ndi.gaussian_filter(low, sigma, truncate=_TRUNCATE, mode="nearest")
    return low - ndi.uniform_filter(low, size=_box_size(size), mode="nearest")


def _gauss_radius(sigma: float) -> int:
    return int(_TRUNCATE * float(sigma) + 0.5) if sigma > 0 else 0


def _box_size(size: int) -> int:
    return max(int(size), 3)


def _box_reach(size: int) -> tuple[int, int]:
    """Pixels before and after the centre that `bandpass`'s box mean of `size` covers (ndimage's
    window of an even size reaches one pixel further back than forward)."""
    size = _box_size(size)
    return size // 2, size - size // 2 - 1


def bandpass_reach(sigma: float, size: int) -> int:
    """How far (px) the band-pass of `bandpass` reaches: an output pixel depends on input pixels
    at most this far away."""
    return _gauss_radius(sigma) + max(_box_reach(size))


@lru_cache(maxsize=64)
def _bandpass_response(shape: tuple[int, int], sigma: float, size: int) -> np.ndarray:
    """`bandpass` as a multiplier of ``rfft2(image, s=shape)``: the Gaussian (truncated as
    there), then minus its box mean, as circular convolutions on a grid of `shape`."""
    def along(n: int, transform: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        gauss = np.zeros(n)
        r = _gauss_radius(sigma)
        x = np.arange(-r, r + 1)
        k = np.exp(-0.5 * (x / sigma) ** 2) if sigma > 0 else np.ones(1)
        np.add.at(gauss, x % n, k / k.sum())
        box = np.zeros(n)
        back, ahead = _box_reach(size)
        np.add.at(box, np.arange(-ahead, back + 1) % n, 1.0 / (back + ahead + 1))  # as a convolution
        return transform(gauss), transform(box)

    gy, uy = along(shape[0], np.fft.fft)
    gx, ux = along(shape[1], np.fft.rfft)
    response = (gy[:, None] * gx[None, :]) * (1.0 - uy[:, None] * ux[None, :])
    response = response.astype(np.complex64)
    response.flags.writeable = False
    return response


def bandpass_patch(image: np.ndarray, corner: tuple[int, int], size: tuple[int, int], *, sigma: float = 1.0,
                   box: int = 9) -> np.ndarray:
    """:func:`bandpass` of the `size` patch of `image` at `corner` (which may reach past the edges).

    Filtered as a piece of the whole image: with FFTs, on the patch grown by the filter's reach;
    the image's edges are extended with their own values, as :func:`bandpass` extends its
    input's (the two differ slightly within the filter's reach of an image edge, where
    :func:`bandpass` extends the smoothed image). A few times faster than :func:`bandpass` on
    a piece for the 256-pixel patches of refinement.
    """
    (h, w), (cy, cx), (ph, pw) = image.shape[:2], corner, size
    e = bandpass_reach(sigma, box) + 1
    y0, x0, y1, x1 = cy - e, cx - e, cy + ph + e, cx + pw + e
    piece = image[max(0, y0):min(h, y1), max(0, x0):min(w, x1)]
    if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
        piece = np.pad(piece, ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w))), mode="edge")
    shape = (sfft.next_fast_len(piece.shape[0], real=True), sfft.next_fast_len(piece.shape[1], real=True))
    spectrum = sfft.rfft2(piece.astype(np.float32), s=shape, workers=1)
    spectrum *= _bandpass_response(shape, float(sigma), int(box))
    return sfft.irfft2(spectrum, s=shape, workers=1)[e:e + ph, e:e + pw]


def _edge_weight(n: int, width: int) -> np.ndarray:
    """Taper along one axis: a raised cosine over ``min(width, n // 4)`` px at each end."""
    t = min(width, n // 4)
    return raised_cosine(n, t) if t > 0 else np.ones(n, np.float32)


def _taper(a: np.ndarray, width: int = 8) -> np.ndarray:
    """Soften the borders so the crop edges do not dominate the phase correlation."""
    return a * _edge_weight(a.shape[0], width)[:, None] * _edge_weight(a.shape[1], width)[None, :]


def phase_surface(a: np.ndarray, b: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Phase correlation of A and B; the peak is at ``c`` (mod shape) where B(u + c) = A(u)."""
    fa = sfft.rfft2(_taper(a), s=shape, workers=1)
    fb = sfft.rfft2(_taper(b), s=shape, workers=1)
    cross = fb * fa.conj()
    mag = np.abs(cross)
    cross /= np.maximum(mag, 1e-6 * (float(mag.mean()) + 1e-30))
    return sfft.irfft2(cross, s=shape, workers=1)


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


def pooled_ncc(As: Sequence[np.ndarray], Bs: Sequence[np.ndarray], c: tuple[int, int]) -> float:
    """Pearson correlation over several patch pairs at the same shift (each patch mean removed)."""
    sab = saa = sbb = 0.0
    for a, b in zip(As, Bs):
        t = _ncc_terms(a, b, c)
        sab, saa, sbb = sab + t[0], saa + t[1], sbb + t[2]
    den = math.sqrt(saa * sbb)
    return sab / den if den > 0 else float("nan")


def ncc_surface(a: np.ndarray, b: np.ndarray, r: int) -> tuple[np.ndarray, float, np.ndarray]:
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


def ncc_window(a: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray, min_area: float) -> np.ndarray:
    """Pearson correlation of A and B over their real overlap at every offset ``c`` in ``[lo, hi]``.

    ``B(u + c) = A(u)`` as in :func:`pooled_ncc`, which this equals offset by offset (each overlap's
    own means removed), computed for all offsets at once with FFTs of A, B, their squares and their
    supports (zero-padded: no wrap-around). Offsets comparing fewer than `min_area` pixels are -inf.
    Returns an array of shape ``hi - lo + 1``.
    """
    shape = (sfft.next_fast_len(a.shape[0] + b.shape[0], real=True),
             sfft.next_fast_len(a.shape[1] + b.shape[1], real=True))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    fa, fa2, foa = (sfft.rfft2(v, s=shape, workers=1).conj() for v in (a64, a64 * a64, np.ones(a.shape)))
    fb, fb2, fob = (sfft.rfft2(v, s=shape, workers=1) for v in (b64, b64 * b64, np.ones(b.shape)))
    cy = np.arange(int(lo[0]), int(hi[0]) + 1) % shape[0]
    cx = np.arange(int(lo[1]), int(hi[1]) + 1) % shape[1]

    def corr(f: np.ndarray, g: np.ndarray) -> np.ndarray:
        return sfft.irfft2(f * g, s=shape, workers=1)[np.ix_(cy, cx)]

    n = np.round(corr(foa, fob))
    sa, sb = corr(fa, fob), corr(foa, fb)
    nn = np.maximum(n, 1)
    cov = corr(fa, fb) - sa * sb / nn
    var = np.maximum((corr(fa2, fob) - sa * sa / nn) * (corr(foa, fb2) - sb * sb / nn), 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(var)
    return np.where((n >= max(min_area, 4)) & (var > 0), r, -np.inf)


def _window_sums(v: np.ndarray, ph: int, pw: int, r: int) -> np.ndarray:
    """Sums of ``v`` over ph x pw windows at offsets 0..2r (running sums: one pass over v)."""
    rows = np.empty((2 * r + 1, v.shape[1]))
    rows[0] = v[:ph].sum(axis=0, dtype=np.float64)
    rows[1:] = rows[0] + np.cumsum(v[ph:ph + 2 * r] - v[:2 * r], axis=0, dtype=np.float64)
    out = np.empty((2 * r + 1, 2 * r + 1))
    out[:, 0] = rows[:, :pw].sum(axis=1)
    out[:, 1:] = out[:, :1] + np.cumsum(rows[:, pw:pw + 2 * r] - rows[:, :2 * r], axis=1)
    return out


# Least-squares fit of z = a + b y + c x + d y^2 + e xy + f x^2 on the 3x3 neighbourhood.
_YY, _XX = np.mgrid[-1:2, -1:2]
_QUAD = np.linalg.pinv(np.stack(
    [np.ones(9), _YY.ravel(), _XX.ravel(), _YY.ravel() ** 2, (_YY * _XX).ravel(), _XX.ravel() ** 2],
    axis=1))


def _vertex(m: float, z0: float, p: float) -> float:
    """Offset of the vertex of the parabola through (-1, m), (0, z0), (1, p); 0 unless a maximum."""
    den = m - 2 * z0 + p
    return 0.5 * (m - p) / den if den < 0 else 0.0


def quadratic_peak(z: np.ndarray) -> tuple[float, float]:
    """Sub-pixel offset of the maximum of a 3x3 neighbourhood (centre = 0)."""
    if not np.isfinite(z).all():
        return 0.0, 0.0
    _, b, c, d, e, f = _QUAD @ z.ravel()
    hess = np.array([[2 * d, e], [e, 2 * f]])
    if d < 0 and f < 0 and np.linalg.det(hess) > 0:
        oy, ox = np.linalg.solve(hess, [-b, -c])
    else:  # saddle or flat: fall back to one parabola per axis through the centre
        oy, ox = _vertex(z[0, 1], z[1, 1], z[2, 1]), _vertex(z[1, 0], z[1, 1], z[1, 2])
    return float(np.clip(oy, -1, 1)), float(np.clip(ox, -1, 1))


def climb(f: Callable[[tuple[int, int]], float], start: tuple[int, int], lo: np.ndarray, hi: np.ndarray,
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

    def around(c: tuple[int, int]) -> np.ndarray:
        return np.array([[value((c[0] + dy, c[1] + dx)) for dx in (-1, 0, 1)] for dy in (-1, 0, 1)])

    c = (int(start[0]), int(start[1]))
    for _ in range(max_steps):
        k = int(np.argmax(around(c)))
        if k == 4:
            break
        c = (c[0] + k // 3 - 1, c[1] + k % 3 - 1)
    z = around(c)
    on_edge = c[0] in (lo[0], hi[0]) or c[1] in (lo[1], hi[1])
    off = quadratic_peak(z) if not on_edge else (0.0, 0.0)
    return np.array(c, float) + off, float(z[1, 1]), on_edge


def top_peaks(sub: np.ndarray, n: int, radius: int = 2) -> list[tuple[int, int]]:
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
