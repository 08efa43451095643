"""Tile sources: what registration reads, from image files (JPEG, PNG, TIFF) or from arrays in memory."""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from ..imageio import tile_luminance
from ..pixels import block_mean, luma

__all__ = ["TileImages", "JpegTiles", "ArrayTiles", "reduce_tile"]


class TileImages(Protocol):
    """What registration reads: a sequence of same-sized grey tiles, optionally reduced."""

    def __len__(self) -> int: ...

    def gray(self, i: int, scale: int = 1) -> np.ndarray:
        """Tile `i` as a uint8 or float32 luminance array of shape ``(ceil(h / scale), ceil(w / scale))``."""
        ...


class JpegTiles:
    """Tiles read from image files as luminance (:func:`ofm_tiling.imageio.tile_luminance`).

    JPEG tiles are uint8, and reduced decodes use libjpeg's DCT scaling, so ``scale`` should be
    1, 2, 4 or 8. PNG and TIFF tiles (8 or 16 bits) are float32 block means, 16-bit precision kept.

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
        image = tile_luminance(self.paths[i], int(scale))
        image.flags.writeable = False  # shared through the cache
        if self.cache_size > 0:
            with self._lock:
                self._cache[key] = image
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return image


class ArrayTiles:
    """Tiles held in memory (tests, or images already decoded).

    Reduced versions are block means, so their size is ``ceil(h / scale) x ceil(w / scale)`` like a
    DCT-scaled JPEG decode. Colour images are converted to luminance (:func:`ofm_tiling.pixels.luma`).

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
            image = luma(image[..., :3])
        if scale <= 1:
            return image.astype(np.float32, copy=True)
        return block_mean(image, int(scale))


def reduce_tile(image: np.ndarray, scale: int) -> np.ndarray:
    """`image` reduced `scale` times by block means, as float32 (size rounded up, like libjpeg)."""
    if scale == 1:
        return image.astype(np.float32, copy=False)
    if image.dtype == np.uint8:  # Pillow's box reduction: the same means in C, without the GIL
        return np.asarray(Image.fromarray(image).reduce(scale)).astype(np.float32)
    return block_mean(image, scale)
