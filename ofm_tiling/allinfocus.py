"""All-in-focus (extended depth of field) images of a z-stack: plane alignment and Laplacian-pyramid fusion.

Every x-y position of a smart-stack scan holds several JPEGs taken at different focus. This module
aligns the planes of a stack by translation (`align_planes`) and fuses them into one image that is
sharp wherever any plane is (`fuse_stack`); `edf_from_paths` does both for a stack of files.

Over 400 lines: alignment and fusion share the plane analysis and the pyramid geometry, and are one
subject (a stack in, one image out).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import fft, ndimage

from .errors import OfmTilingError
from .imageio import read_rgb
from .pixels import block_mean, luma, ncc

__all__ = ["fuse_stack", "align_planes", "edf_from_paths"]

# --- fusion -----------------------------------------------------------------------------------------
#
# Pyramid layout: level 0 is the full-resolution image, level l is reduced 2**l times by 2 x 2 means
# and the last level is the base. Levels 0 and 1 share one set of weights, measured on level 1: at
# full resolution OFM images (optical resolution of several pixels) hold mostly sensor noise and
# JPEG artefacts. Sharing weights lets those two levels be fused as a weighted sum of the planes plus
# a quarter-resolution correction that swaps in the fused coarse levels, so the full-resolution
# work is one multiply-add per plane and sample instead of a pyramid per plane. Colour images are
# kept channel-first ((C, h, w) float32) below full resolution, so numpy's inner loops run along
# rows rather than over 3 channels.

# Soft selection: weight = energy ** 16 (four doublings of the exponent), so a plane with 20 % more
# local energy than another gets 18 times its weight, while planes of equal energy (glass, noise)
# are averaged instead of picked at random. _WINDOW smooths the energy and _SMOOTH the weights
# (consistency), in pixels of each level. Tuned on generated flat and tilted stacks and on a sharp
# edge (tests/test_focus.py): an averaged base, or softer weights at coarse levels, lose contrast
# when the outer planes are far out of focus; a smaller energy window lets noise pick slightly
# defocused planes (-0.3 dB against the central plane of a flat stack); hard per-pixel selection
# leaves halos of 15-20 grey levels at edges.
_POWER_DOUBLINGS = 4
_SMOOTH = 1.5
_WINDOW = 1.5
# Weights below this are dropped (the rest renormalised) so the full-resolution pass skips planes
# that do not contribute to a block of rows.
_MIN_WEIGHT = 0.005


def _reduce(x: np.ndarray) -> np.ndarray:
    """2 x 2 mean over the last two axes of an (h, w) or channel-first (C, h, w) image, float32."""
    if x.ndim == 2:
        return block_mean(x, 2)
    # block_mean reduces the first two axes: one channel at a time keeps the layout channel-first.
    return np.stack([block_mean(c, 2) for c in x])


def _upsample(x: np.ndarray, axis: int, factor: int, length: int) -> np.ndarray:
    """Linear upsampling by `factor` along `axis` (one of the last two), cropped to `length`.

    Sample ``i`` of `x` is the mean of output samples ``factor*i ... factor*i + factor - 1`` (the
    geometry of `_reduce`): outputs between two input centres interpolate between them, and the
    outer ``factor/2`` outputs at each end repeat the edge.
    """
    axis %= x.ndim
    n, h = x.shape[axis], factor // 2
    shape = list(x.shape)
    shape[axis] = factor * n
    out = np.empty(shape, dtype=np.float32)

    def along(a: np.ndarray, s: slice) -> np.ndarray:
        return a[(slice(None),) * axis + (s,)]

    along(out, slice(0, h))[...] = along(x, slice(0, 1))
    along(out, slice(factor * n - h, None))[...] = along(x, slice(n - 1, n))
    if n > 1:
        lo, step = along(x, slice(0, n - 1)), np.diff(x, axis=axis)
        frac = (np.arange(factor, dtype=np.float32) + 0.5) / factor
        if axis == x.ndim - 2:
            # Split the row axis into (pairs, factor): a view, and the inner loops stay along rows.
            mid = along(out, slice(h, factor * n - h)).reshape(shape[:axis] + [n - 1, factor, shape[-1]])
            np.multiply(step[..., None, :], frac[:, None], out=mid)
            mid += lo[..., None, :]
        elif axis == x.ndim - 1:
            # One strided pass per phase: inner loops along the row, not over `factor` values.
            for k in range(factor):
                dst = out[..., h + k:factor * n - h:factor]
                np.multiply(step, frac[k], out=dst)
                dst += lo
        else:
            raise ValueError("can only upsample along the last two axes")
    return along(out, slice(0, length))


def _expand(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear 2x upsampling over the last two axes to ``shape[-2:]`` (inverse geometry of `_reduce`)."""
    return _upsample(_upsample(x, -2, 2, shape[-2]), -1, 2, shape[-1])


def _laplacian_energy(y: np.ndarray) -> np.ndarray:
    """Squared 4-neighbour Laplacian relative to the mean brightness, same size (edges repeated).

    Dividing by the mean keeps a lamp or exposure drift between planes from choosing planes.
    """
    p = np.pad(y, 1, mode="edge")
    lap = p[1:-1, :-2] + p[1:-1, 2:]
    lap += p[:-2, 1:-1]
    lap += p[2:, 1:-1]
    lap -= 4 * y
    lap *= np.float32(1 / max(float(y.mean()), 1e-3))
    return lap * lap


def _weights(energy: np.ndarray, *, consistency: bool, scale: float = 1.0, pool=None) -> np.ndarray:
    """Per-plane weights (N, h, w) from detail energies (N, h, w); they sum to 1 at every pixel."""
    if not consistency:
        # The textbook rule: every pixel takes the plane of highest energy.
        best = np.argmax(energy, axis=0)
        return (np.arange(energy.shape[0])[:, None, None] == best).astype(np.float32)
    run = pool.map if pool is not None else map

    def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
        return ndimage.gaussian_filter(x, sigma * scale, mode="nearest")

    w = np.stack(list(run(smooth, energy, [_WINDOW] * len(energy))))
    w += np.float32(1e-20)  # where no plane has any detail, all get the same weight
    w /= w.max(axis=0)
    for _ in range(_POWER_DOUBLINGS):
        w *= w  # w = (energy / max) ** 2**_POWER_DOUBLINGS
    w /= w.sum(axis=0)
    # Consistency: neighbouring pixels of one surface should come from the same planes.
    w = np.stack(list(run(smooth, w, [_SMOOTH] * len(w))))
    w /= w.sum(axis=0)
    return w


def _weighted_sum(w: np.ndarray, images: Sequence[np.ndarray]) -> np.ndarray:
    acc = np.zeros(images[0].shape, dtype=np.float32)
    for wz, img in zip(w, images):
        acc += wz * img
    return acc


def _default_levels(shape: tuple[int, ...]) -> int:
    # A base of 16-32 px, at most 1/64 scale: coarser than that a stack's planes hardly differ.
    return int(np.clip(np.floor(np.log2(min(shape[:2]) / 16)), 2, 6))


def _check_planes(planes: Sequence[np.ndarray]) -> list[np.ndarray]:
    arrs = [np.asarray(p) for p in planes]
    if not arrs:
        raise ValueError("no planes given")
    shape = arrs[0].shape
    for a in arrs:
        if a.shape != shape or a.dtype != np.uint8 or not (a.ndim == 2 or a.ndim == 3 and a.shape[2] == 3):
            raise ValueError("planes must be uint8 images of one shape, (H, W, 3) or (H, W)")
    return arrs


@dataclass
class _Plane:
    """What the fusion needs of one plane besides its pixels."""

    luma_half: np.ndarray   # (H/2, W/2) float32 luminance
    quarter: np.ndarray     # (C, H/4, W/4) float32


def _analyse(plane: np.ndarray) -> _Plane:
    # Pillow's C box reductions are several times faster than numpy's strided sums at full size;
    # rounding to uint8 at half and quarter size costs at most half a grey level.
    half = Image.fromarray(plane).reduce(2)
    luma = np.asarray(half.convert("L") if half.mode == "RGB" else half, dtype=np.float32)
    quarter = half.reduce(2)
    channels = quarter.split() if quarter.mode == "RGB" else (quarter,)
    return _Plane(luma, np.stack([np.asarray(c, dtype=np.float32) for c in channels]))


def fuse_stack(planes: Sequence[np.ndarray], *, method: str = "laplacian", levels: int | None = None,
               consistency: bool = True, workers: int = 1) -> np.ndarray:
    """Fuse a focus stack into one all-in-focus image (extended depth of field).

    Each plane is split into a Laplacian pyramid. Every level, the base included, is a weighted sum
    of the planes' levels, weighted by each plane's local detail energy at that level measured on
    luminance; the same weights serve all colour channels, so colours stay true. With
    `consistency` the weights are soft and spatially smoothed: no halos from hard switching at
    in-focus edges, and noise is averaged where no plane is sharper (glass). Each region takes the
    planes that are sharp there, so a tilted sample comes out sharp everywhere.

    Parameters
    ----------
    planes : sequence of (H, W, 3) or (H, W) uint8 arrays
        The planes of one stack, aligned (see `align_planes`), at least 8 x 8 pixels.
    method : {'laplacian'}, optional
        Fusion method.
    levels : int, optional
        Pyramid levels above the base, at least 2; by default down to a base of 16-32 px, at most
        6 levels (1/64 scale).
    consistency : bool, optional
        Soft, smoothed selection (default). False gives the textbook per-pixel maximum-energy
        selection, which leaves halos at edges and grain on glass.
    workers : int, optional
        Threads (numpy and Pillow release the GIL).

    Returns
    -------
    ndarray of uint8
        The fused image, same shape as a plane.

    Notes
    -----
    The two finest levels share one set of weights, measured at half resolution (on OFM images the
    full-resolution band is mostly noise), which lets them be fused in one pass over the
    full-resolution pixels.
    """
    if method != "laplacian":
        raise ValueError(f"unknown fusion method {method!r}; choose 'laplacian'")
    arrs = _check_planes(planes)
    if min(arrs[0].shape[:2]) < 8:
        raise ValueError("planes must be at least 8 x 8 pixels")
    levels = _default_levels(arrs[0].shape) if levels is None else int(levels)
    if levels < 2:
        raise ValueError("levels must be at least 2")
    if len(arrs) == 1:
        return arrs[0].copy()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return _fuse(arrs, list(pool.map(_analyse, arrs)), levels, consistency, pool)


def _fuse(arrs: list[np.ndarray], info: list[_Plane], levels: int, consistency: bool,
          pool: ThreadPoolExecutor) -> np.ndarray:
    # Weights of levels 0 and 1 from the half-resolution detail energy pooled to the quarter grid
    # (half the smoothing, in quarter pixels).
    fine = list(pool.map(lambda p: _reduce(_laplacian_energy(p.luma_half)), info))
    w_fine = _weights(np.stack(fine), consistency=consistency, scale=0.5, pool=pool)
    w_fine[w_fine < _MIN_WEIGHT] = 0
    w_fine /= w_fine.sum(axis=0)

    # Gaussian pyramid from level 2 to the base, and each level's weights from its own energy.
    gauss = [[p.quarter for p in info]]
    for _ in range(levels - 2):
        gauss.append(list(pool.map(_reduce, gauss[-1])))
    weights = [_weights(np.stack(list(pool.map(lambda g: _laplacian_energy(luma(g, channel_axis=0)), gl))),
                        consistency=consistency, pool=pool) for gl in gauss]
    # Collapse. The base is weighted like the other levels rather than averaged: planes far out of
    # focus are blurred even at 1/64 scale, and averaging them would wash out the contrast.
    fused = _weighted_sum(weights[-1], gauss[-1])
    for lvl in range(len(gauss) - 2, -1, -1):
        gl, coarser = gauss[lvl], gauss[lvl + 1]
        bands = list(pool.map(lambda g, c: g - _expand(c, g.shape), gl, coarser))
        fused = _weighted_sum(weights[lvl], bands) + _expand(fused, gl[0].shape)
    correction = fused - _weighted_sum(w_fine, gauss[0])
    return _blend(arrs, w_fine, correction, pool)


def _blend(arrs: list[np.ndarray], w_fine: np.ndarray, correction: np.ndarray, pool: ThreadPoolExecutor,
           block: int = 128) -> np.ndarray:
    """``sum_z up4(w_z) * plane_z + up4(correction)``, by blocks of rows (bounded memory, threads)."""
    shape = arrs[0].shape
    h, w = shape[:2]
    c = correction.shape[0]
    out = np.empty(shape, dtype=np.uint8)
    flat_out = out.reshape(h, w * c)

    def do(r0: int) -> None:
        r1 = min(r0 + block, h)
        # Quarter-resolution rows the block interpolates from (one beyond each end), and the
        # block's rows within their 4x upsampling.
        q0, q1 = max(0, r0 // 4 - 1), min(w_fine.shape[1], -(-r1 // 4) + 1)
        a, b = r0 - 4 * q0, r1 - 4 * q0
        # Interleave channels at quarter height, where it is cheap, to multiply whole rows at once.
        corr = np.empty((q1 - q0, w * c), dtype=np.float32)
        for k in range(c):
            corr[:, k::c] = _upsample(correction[k, q0:q1], -1, 4, w)
        acc = _upsample(corr, -2, 4, b)[a:]
        wq = w_fine[:, q0:q1]
        for z in np.flatnonzero(wq.max(axis=(1, 2)) > 0):
            wz = _upsample(wq[z], -1, 4, w)
            if c > 1:
                wz = np.repeat(wz, c, axis=1)
            term = _upsample(wz, -2, 4, b)[a:]
            np.multiply(term, arrs[z][r0:r1].reshape(r1 - r0, w * c), out=term)
            acc += term
        np.clip(acc, 0, 255, out=acc)
        np.rint(acc, out=acc)
        flat_out[r0:r1] = acc

    list(pool.map(do, range(0, h, block)))  # block must be a multiple of 4
    return out


# --- alignment -------------------------------------------------------------------------------------

#: Normalised cross-correlation with the reference (after a 1 px blur) that a shifted plane must reach
#: for its shift to be applied: tissue 4 planes from focus scores 0.55-0.9, blank glass with a
#: speck or two 0.1-0.45, where a "shift" is only noise and aligning would be harmful.
_MIN_NCC = 0.5


def _ncc(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> float:
    """Normalised cross-correlation of ``a[y, x]`` with ``b[y + dy, x + dx]`` over their overlap (0 if flat)."""
    h, w = a.shape
    if abs(dy) >= h // 2 or abs(dx) >= w // 2:
        return -1.0
    score = ncc(a[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)],
                b[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)])
    return 0.0 if np.isnan(score) else score


def _shifts(lumas: list[np.ndarray], reference: int, factor: int, pool=None) -> list[tuple[int, int]]:
    """Whole-pixel shift (dy, dx) of each plane relative to the reference, at `factor` x the size.

    Each plane is registered to its neighbour towards the reference and the steps are summed:
    neighbouring planes are similarly blurred and, in a tilted sample, sharp in neighbouring
    regions, where a plane 4 steps away shares hardly any sharp detail with the reference (direct
    registration was up to 4 px off on generated tilted stacks, the chain at most 1 px).
    """
    h, w = lumas[0].shape
    window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    # Defocused planes keep a reliable phase only at low spatial frequencies: a Gaussian low-pass
    # and partial whitening (|cross|**0.6) keep noise-dominated frequencies from moving the peak;
    # full whitening (classic phase correlation) was 1-10 px off on planes 4 steps from focus.
    lowpass = np.exp(-(fy**2 + fx**2) / (2 * 0.05**2))
    run = pool.map if pool is not None else map
    spectra = list(run(lambda y: fft.rfft2((y - y.mean()) * window), lumas))
    smooth = list(run(lambda y: ndimage.gaussian_filter(y, 1.0), lumas))

    def step(a: int, b: int) -> np.ndarray:
        """Sub-pixel shift of plane b relative to plane a, or 0 when the match is not convincing."""
        cross = spectra[b] * np.conj(spectra[a])
        magnitude = np.abs(cross)
        cross *= lowpass / (magnitude + 1e-6 * magnitude.max() + 1e-30) ** 0.6
        corr = fft.irfft2(cross, s=(h, w))
        peak = np.unravel_index(int(np.argmax(corr)), corr.shape)
        shift = []
        for axis, (p, n) in enumerate(zip(peak, corr.shape)):
            # Parabola through the peak and its neighbours (wrapping around) for a sub-pixel position.
            line = corr[:, peak[1]] if axis == 0 else corr[peak[0]]
            lo, mid, hi = line[(p - 1) % n], line[p], line[(p + 1) % n]
            den = lo - 2 * mid + hi
            sub = p + (0.5 * (lo - hi) / den if den < 0 else 0.0)
            shift.append(sub - n if sub > n / 2 else sub)
        # Verify the peak: the shifted plane must match, and better than unshifted (sub-pixel
        # steps of noise must not add up along the chain either).
        whole = (int(round(shift[0])), int(round(shift[1])))
        score = _ncc(smooth[a], smooth[b], *whole)
        if score < _MIN_NCC or whole != (0, 0) and score < _ncc(smooth[a], smooth[b], 0, 0):
            return np.zeros(2)
        return np.array(shift)

    # Each plane against its neighbour towards the reference; the pairs are independent.
    toward = [k + 1 if k < reference else k - 1 for k in range(len(lumas))]
    others = [k for k in range(len(lumas)) if k != reference]
    steps = dict(zip(others, run(lambda k: step(toward[k], k), others)))
    total = [np.zeros(2) for _ in lumas]
    for k in range(reference - 1, -1, -1):
        total[k] = total[k + 1] + steps[k]
    for k in range(reference + 1, len(lumas)):
        total[k] = total[k - 1] + steps[k]
    return [(int(round(t[0] * factor)), int(round(t[1] * factor))) for t in total]


def _plane_shifts(arrs: list[np.ndarray], info: list[_Plane] | None, reference: int, pool=None,
                  max_size: int = 1024) -> list[tuple[int, int]]:
    """Shifts measured on luminance of at most `max_size` px (full size, or from the half-size one)."""
    if max(arrs[0].shape[:2]) <= max_size:
        factor, lumas = 1, [np.asarray(Image.fromarray(a).convert("L") if a.ndim == 3 else a, dtype=np.float32)
                            for a in arrs]
    else:
        factor, lumas = 2, [p.luma_half for p in info or map(_analyse, arrs)]
    while max(lumas[0].shape) > max_size:
        factor, lumas = factor * 2, [_reduce(y) for y in lumas]
    return _shifts(lumas, reference, factor, pool)


def _shift(plane: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``out[y, x] = plane[y + dy, x + dx]``, repeating the edges."""
    h, w = plane.shape[:2]
    dy, dx = int(np.clip(dy, 1 - h, h - 1)), int(np.clip(dx, 1 - w, w - 1))
    core = plane[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    pad = [(max(-dy, 0), max(dy, 0)), (max(-dx, 0), max(dx, 0))] + [(0, 0)] * (plane.ndim - 2)
    return np.pad(core, pad, mode="edge")


def align_planes(planes: Sequence[np.ndarray], *, reference: int | None = None) -> list[np.ndarray]:
    """Align the planes of a stack to one of them by translation.

    Refocusing can move the image sideways by a few pixels. Shifts are measured by phase
    correlation of the luminance (reduced to at most 1024 px; partly whitened and low-pass weighted,
    because defocused planes keep only their coarse structure), checked by normalised
    cross-correlation, and applied in whole pixels, repeating the edges. A plane that does not match
    the reference clearly better when shifted (blank glass, a speck or two) is left where it is.

    Parameters
    ----------
    planes : sequence of (H, W, 3) or (H, W) uint8 arrays
        The planes of one stack, one shape.
    reference : int, optional
        Index of the plane the others are aligned to; by default the middle one.

    Returns
    -------
    list of ndarray
        The planes, shifted where needed; the input arrays themselves when nothing moves.
    """
    arrs = _check_planes(planes)
    reference = len(arrs) // 2 if reference is None else int(reference)
    if not 0 <= reference < len(arrs):
        raise ValueError(f"reference plane {reference} outside the stack of {len(arrs)}")
    shifts = _plane_shifts(arrs, None, reference)
    return [a if s == (0, 0) else _shift(a, *s) for a, s in zip(arrs, shifts)]


def edf_from_paths(paths: Sequence[str | os.PathLike], *, workers: int = 2) -> np.ndarray:
    """All-in-focus colour image of one stack of JPEGs: decode, align, fuse.

    Parameters
    ----------
    paths : sequence of path-like
        The images of one stack, in z order.
    workers : int, optional
        Threads (JPEG decoding, Pillow and numpy release the GIL).

    Returns
    -------
    (H, W, 3) ndarray of uint8

    Raises
    ------
    OfmTilingError
        If an image is missing, cannot be decoded, or differs in size from the others.
    """
    paths = list(paths)
    if not paths:
        raise ValueError("no images to fuse")

    def load(path: str | os.PathLike) -> tuple[np.ndarray, _Plane]:
        plane = read_rgb(path)
        return plane, _analyse(plane)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        loaded = list(pool.map(load, paths))
        arrs, info = [a for a, _ in loaded], [p for _, p in loaded]
        for path, a in zip(paths, arrs):
            if a.shape != arrs[0].shape:
                raise OfmTilingError(path, f"image size {a.shape[1]}x{a.shape[0]} differs from the rest of its "
                                           f"stack ({arrs[0].shape[1]}x{arrs[0].shape[0]})")
        if len(arrs) == 1 or min(arrs[0].shape[:2]) < 8:
            return arrs[0]
        shifts = _plane_shifts(arrs, info, len(arrs) // 2, pool)
        for k, s in enumerate(shifts):
            if s != (0, 0):
                arrs[k] = _shift(arrs[k], *s)
                info[k] = _analyse(arrs[k])
        return _fuse(arrs, info, _default_levels(arrs[0].shape), True, pool)
