"""Mosaics of any pixel type turned into 8-bit pictures for people: one contrast setting per mosaic.

8-bit mosaics (RGB or grey) are shown as they are. A 16-bit mosaic is scaled linearly from its
0.1st to its 99.9th percentile onto 0..255 (clipped beyond), the same range for every picture of
it: the preview, the viewer's tiles and the value in the report. The range is measured on the
mosaic's smallest stored pyramid level (at most one 512-pixel tile in ofm-tiling's files), so the
writer and a viewer made later from the file find the same numbers without a pass over level 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["PERCENTILES", "SAMPLE_PIXELS", "IDENTITY", "DisplayRange", "display_range", "range_of", "sample_step",
           "to_display"]

#: Percentiles of the mosaic's values shown as black and as white.
PERCENTILES = (0.1, 99.9)
#: At most about this many pixels of the reduced mosaic are measured (a strided sample beyond).
SAMPLE_PIXELS = 1 << 20


@dataclass(frozen=True)
class DisplayRange:
    """Values shown as black (`lo`) and white (`hi`); everything between is scaled linearly."""

    lo: int
    hi: int

    @property
    def is_identity(self) -> bool:
        return (self.lo, self.hi) == (0, 255)

    def to_json(self) -> list[int]:
        return [self.lo, self.hi]


#: How 8-bit mosaics are shown: as they are.
IDENTITY = DisplayRange(0, 255)


def sample_step(shape: tuple[int, ...]) -> int:
    """Stride along both axes that keeps a sample of an image of `shape` near `SAMPLE_PIXELS`."""
    return max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / SAMPLE_PIXELS))))


def display_range(reduced: np.ndarray) -> DisplayRange:
    """The display range of a mosaic from (a sample of) its reduced image.

    Parameters
    ----------
    reduced : ndarray
        uint8 or uint16 pixels of the mosaic's smallest pyramid level, or a strided sample of it
        (:func:`sample_step`).

    Returns
    -------
    DisplayRange
        ``(0, 255)`` for uint8 (shown as is); for uint16 the `PERCENTILES` of the values, rounded
        down and up to whole values and at least one value apart.
    """
    a = np.asarray(reduced)
    if a.dtype == np.uint8:
        return IDENTITY
    if a.dtype != np.uint16:
        raise ValueError(f"reduced must be uint8 or uint16, got {a.dtype}")
    lo, hi = np.percentile(a, PERCENTILES)
    lo, hi = int(np.floor(lo)), int(np.ceil(hi))
    return DisplayRange(lo, max(hi, lo + 1))


def range_of(image: np.ndarray) -> DisplayRange:
    """:func:`display_range` of a whole reduced image, measured on its strided sample (:func:`sample_step`)."""
    step = sample_step(image.shape)
    return display_range(np.asarray(image)[::step, ::step])


@lru_cache(maxsize=8)
def _lut(window: DisplayRange) -> np.ndarray:
    values = np.arange(65536, dtype=np.float64)
    scaled = (values - window.lo) * (255.0 / (window.hi - window.lo)) + 0.5
    lut = np.clip(scaled, 0, 255).astype(np.uint8)
    lut.flags.writeable = False  # shared through the cache
    return lut


def to_display(image: np.ndarray, window: DisplayRange) -> np.ndarray:
    """`image` as 8-bit for display: uint8 unchanged (no copy), uint16 scaled through `window`.

    A 16-bit value v becomes ``round(255 * (v - lo) / (hi - lo))`` clipped to 0..255, by a lookup
    table (one indexing pass, no float image).
    """
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a
    if a.dtype != np.uint16:
        raise ValueError(f"image must be uint8 or uint16, got {a.dtype}")
    return _lut(window)[a]
