"""Pixel rules shared by every stage: luminance, the raised-cosine ramp, block reduction, NCC.

Each rule has its one home here, so registration, all-in-focus fusion, mosaic fusion and the
pyramid writer agree on them.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .options import PIXEL_TYPES  # re-exported: pixel rules and pixel types side by side

__all__ = ["PIXEL_TYPES", "PixelForm", "pixel_form", "pixel_type_of", "LUMA", "luma", "raised_cosine", "block_mean",
           "halve_u8", "halve_u16", "halve", "ncc"]



class PixelForm(NamedTuple):
    """How an image of a pixel type is held in numpy: trailing axes of a pixel and the dtype."""

    sample: tuple[int, ...]  # (3,) for RGB, () for grey
    dtype: np.dtype

    @property
    def max(self) -> int:
        return int(np.iinfo(self.dtype).max)

    def nbytes(self, shape: tuple[int, int]) -> int:
        """Bytes of an image of `shape` (height, width) in this form."""
        return int(np.prod((*shape[:2], *self.sample))) * self.dtype.itemsize


def pixel_form(pixel_type: str) -> PixelForm:
    """The numpy form of `pixel_type`: rgb8 ``(..., 3)`` uint8, grey8 uint8, grey16 uint16."""
    if pixel_type not in PIXEL_TYPES:
        raise ValueError(f"pixel_type must be one of {', '.join(map(repr, PIXEL_TYPES))}, got {pixel_type!r}")
    return PixelForm((3,) if pixel_type == "rgb8" else (), np.dtype(np.uint16 if pixel_type == "grey16" else np.uint8))


def pixel_type_of(image: np.ndarray) -> str | None:
    """The pixel type an image array holds, or None if it is none of `PIXEL_TYPES`."""
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return "rgb8"
    if image.ndim == 2 and image.dtype in (np.uint8, np.uint16):
        return "grey8" if image.dtype == np.uint8 else "grey16"
    return None

#: ITU-R 601 luma weights, as Pillow's "L" mode (so our luminance equals Pillow's decode).
LUMA = (0.299, 0.587, 0.114)


def luma(image: np.ndarray, *, channel_axis: int = -1) -> np.ndarray:
    """Luminance of an RGB image as float32 (a 2-D image is returned as float32 unchanged).

    Parameters
    ----------
    image : ndarray
        ``(H, W)``, ``(H, W, 3)`` (``channel_axis=-1``) or ``(3, H, W)`` (``channel_axis=0``).
    """
    a = np.asarray(image)
    if a.ndim == 2 or a.shape[channel_axis] == 1:
        return np.squeeze(a, axis=channel_axis).astype(np.float32) if a.ndim == 3 else a.astype(np.float32)
    c = np.moveaxis(a, channel_axis, 0)
    out = np.float32(LUMA[0]) * c[0].astype(np.float32)
    out += np.float32(LUMA[1]) * c[1]
    out += np.float32(LUMA[2]) * c[2]
    return out


@lru_cache(maxsize=512)
def raised_cosine(n: int, width: float) -> np.ndarray:
    """Raised-cosine weight along an axis of `n` pixels: ~0 at both edges, 1 beyond `width`.

    Pixel centres sit half a pixel from the edge, so the weight is small but never 0 inside, and
    two ramps facing each other over the same width sum to 1 (a seamless cross-fade). The width
    is capped at ``n / 2``. The returned array is read-only (it is cached).
    """
    k = np.arange(n)
    d = np.minimum(k + 0.5, n - 0.5 - k)  # distance to the nearer edge
    t = np.clip(d / min(max(float(width), 1.0), n / 2), 0.0, 1.0)
    out = (np.sin(0.5 * np.pi * t) ** 2).astype(np.float32)
    out.flags.writeable = False
    return out


def block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of the first two axes, as float32.

    Partial blocks at the far edges average the pixels that exist, so the result has
    ``ceil(h / factor) x ceil(w / factor)`` pixels, like a DCT-scaled JPEG decode.
    """
    out = np.asarray(image).astype(np.float32, copy=False)
    if factor == 1:
        return out
    for axis in (0, 1):
        n = out.shape[axis]
        starts = np.arange(0, n, factor)
        sums = np.add.reduceat(out, starts, axis=axis, dtype=np.float64)
        counts = (np.minimum(starts + factor, n) - starts).astype(np.float64)
        shape = [1] * out.ndim
        shape[axis] = len(counts)
        out = (sums / counts.reshape(shape)).astype(np.float32)
    return out


def halve_u8(block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`block_mean` by 2 for uint8 images in integer arithmetic, rounded half up.

    Same edge rule as `block_mean` (a last odd row or column averages what exists). numpy
    releases the GIL throughout, so column pieces of one image can run in parallel threads.
    """
    h, w = block.shape[:2]
    if out is None:
        out = np.empty(((h + 1) // 2, (w + 1) // 2, *block.shape[2:]), np.uint8)
    he, we = h - h % 2, w - w % 2
    rows = np.add(block[0:he:2], block[1:he:2], dtype=np.uint16)  # pairs of whole rows: fast
    s = np.empty((he // 2, we // 2, *block.shape[2:]), np.uint16)
    if block.ndim == 3:
        for c in range(block.shape[2]):  # one channel at a time: inner loops run along whole rows
            np.add(rows[:, 0:we:2, c], rows[:, 1:we:2, c], out=s[:, :, c])
    else:
        np.add(rows[:, 0:we:2], rows[:, 1:we:2], out=s)
    s += 2
    s >>= 2
    out[: he // 2, : we // 2] = s
    _halve_edges(block, rows, out)
    return out


def halve_u16(block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`block_mean` by 2 for uint16 images in integer arithmetic, rounded half up.

    The same edge rule as :func:`halve_u8` (a last odd row or column averages what exists), with
    sums in uint32 so that four 16-bit values never overflow.
    """
    h, w = block.shape[:2]
    if out is None:
        out = np.empty(((h + 1) // 2, (w + 1) // 2, *block.shape[2:]), np.uint16)
    he, we = h - h % 2, w - w % 2
    rows = np.add(block[0:he:2], block[1:he:2], dtype=np.uint32)
    s = np.add(rows[:, 0:we:2], rows[:, 1:we:2])
    s += 2
    s >>= 2
    out[: he // 2, : we // 2] = s
    _halve_edges(block, rows, out)
    return out


def _halve_edges(block: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """The last odd column and row of a 2x2 reduction: the rounded mean of the pixels that exist.
    `rows` holds the sums of row pairs, in the wider type the sums of `block` need."""
    h, w = block.shape[:2]
    he, we = h - h % 2, w - w % 2
    if w % 2:
        out[: he // 2, -1] = (rows[:, -1] + 1) >> 1
    if h % 2:
        row = np.add(block[-1, 0:we:2], block[-1, 1:we:2], dtype=rows.dtype)
        out[-1, : we // 2] = (row + 1) >> 1
        if w % 2:
            out[-1, -1] = block[-1, -1]


def halve(block: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """2x2 rounded-mean reduction of a uint8 (:func:`halve_u8`) or uint16 (:func:`halve_u16`) image."""
    if block.dtype == np.uint8:
        return halve_u8(block, out)
    if block.dtype == np.uint16:
        return halve_u16(block, out)
    raise ValueError(f"block must be uint8 or uint16, got {block.dtype}")


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two same-shaped arrays (NaN when either is flat)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size < 2:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt(np.dot(a, a) * np.dot(b, b)))
    return float(np.dot(a, b) / den) if den > 0 else float("nan")
