"""Reading what Fiji's Grid/Collection stitching wrote: its log, its registered layout, its fused image.

The log holds one line per pair of tiles it compared (``A.jpeg[1] <- B.jpeg[1]: (dx, dy)
correlation (R)=r (t ms)``: the shift of B relative to A and its cross-correlation); the registered
``TileConfiguration`` holds each tile's final position. Neither marks groups, references or tiles
left unplaced: Fiji writes every group's reference tile, and every tile no kept link reaches, at
exactly (0, 0). The checks in `ofm_tiling.fiji.checks` work that out.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OfmTilingError
from ..tileconfig import read_tile_configuration

__all__ = ["FijiPair", "read_log_pairs", "read_registered", "merge_channels", "CHANNEL_FILES"]

#: What "Write to disk" produces: one 8-bit TIFF per channel, without a file extension.
CHANNEL_FILES = ("img_t1_z1_c1", "img_t1_z1_c2", "img_t1_z1_c3")

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|NaN|[-+]?Infinity"
_PAIR = re.compile(rf"^\s*(?P<a>.+?)\[\d+\] <- (?P<b>.+?)\[\d+\]: \((?P<dx>{_NUMBER}), (?P<dy>{_NUMBER})\) "
                   rf"correlation \(R\)=(?P<r>{_NUMBER})")


@dataclass(frozen=True)
class FijiPair:
    """One pair of tiles Fiji compared, as its log says.

    Attributes
    ----------
    a, b : str
        Tile file names; `shift` is the position of `b` minus the position of `a`.
    shift : (float, float)
        ``(dx, dy)`` in pixels.
    correlation : float
        Fiji's cross-correlation R of the overlap at that shift.
    """

    a: str
    b: str
    shift: tuple[float, float]
    correlation: float


def read_log_pairs(text: str) -> list[FijiPair]:
    """Every pairwise comparison in a Grid/Collection stitching log (the last one per pair)."""
    pairs: dict[frozenset[str], FijiPair] = {}
    for line in text.splitlines():
        match = _PAIR.match(line)
        if match:
            pair = FijiPair(match["a"], match["b"], (float(match["dx"]), float(match["dy"])), float(match["r"]))
            pairs[frozenset((pair.a, pair.b))] = pair
    return list(pairs.values())


def read_registered(path: str | os.PathLike) -> dict[str, tuple[float, float]]:
    """Fiji's registered positions by tile name (``TileConfiguration.registered.txt``).

    Numbers in Java ``double`` form (``1.0E-4``, ``-0.0``) are read as such; a position that is not
    finite (``NaN``, ``Infinity``) is left out, as a tile Fiji did not place.
    """
    names, positions = read_tile_configuration(path)
    return {name: (float(x), float(y)) for name, (x, y) in zip(names, positions)
            if np.isfinite(x) and np.isfinite(y)}


def _open_channel(path: Path) -> np.ndarray:
    import tifffile

    data: np.ndarray
    try:
        try:
            data = tifffile.memmap(path, mode="r")  # Fiji writes plain uncompressed strips
        except (ValueError, TypeError, OSError):
            data = tifffile.imread(path)
    except FileNotFoundError:
        raise OfmTilingError(path, "file not found") from None
    except Exception as exc:  # tifffile raises several types for damaged or non-TIFF files
        raise OfmTilingError(path, f"cannot read Fiji's fused channel ({exc})") from None
    data = np.squeeze(data)
    if data.ndim != 2:
        raise OfmTilingError(path, f"expected one 2-D image plane, found shape {data.shape}")
    if data.dtype != np.uint8:
        raise OfmTilingError(path, f"expected an 8-bit image, found {data.dtype}")
    return data


def merge_channels(output_dir: str | os.PathLike, *, band_height: int = 512
                   ) -> tuple[tuple[int, int], Iterator[tuple[int, np.ndarray]]]:
    """Merge Fiji's fused channels (``img_t1_z1_c1``, ``_c2``, ``_c3``, no extension) into RGB bands.

    Parameters
    ----------
    output_dir : path
        Fiji's ``output_directory``.
    band_height : int
        Rows per band.

    Returns
    -------
    shape : (int, int)
        Mosaic (height, width).
    bands : iterator of (int, ndarray)
        ``(y0, band)`` with band uint8 of shape (rows, width, 3), top to bottom. A single channel
        (grey tiles) is repeated into R, G and B.

    Raises
    ------
    OfmTilingError
        The first channel is missing, channels differ in size, or a file is not an 8-bit TIFF.
    """
    folder = Path(output_dir)
    paths = [folder / name for name in CHANNEL_FILES]
    if not paths[0].is_file():
        raise OfmTilingError(paths[0], "Fiji wrote no fused image here (did the stitching fail? see Fiji's messages)")
    present = [p for p in paths if p.is_file()]
    if len(present) == 2:
        raise OfmTilingError(paths[2], "Fiji wrote two colour channels but not the third")
    channels = [_open_channel(p) for p in present]
    shape = channels[0].shape
    for p, c in zip(present, channels):
        if c.shape != shape:
            raise OfmTilingError(p, f"channel is {c.shape[1]}x{c.shape[0]} px, the first one {shape[1]}x{shape[0]}")
    if len(channels) == 1:
        channels = channels * 3
    if band_height < 1:
        raise ValueError("band_height must be >= 1")

    def bands() -> Iterator[tuple[int, np.ndarray]]:
        for y0 in range(0, shape[0], band_height):
            y1 = min(y0 + band_height, shape[0])
            band = np.empty((y1 - y0, shape[1], 3), dtype=np.uint8)
            for k, c in enumerate(channels):
                band[..., k] = c[y0:y1]
            yield y0, band

    return (int(shape[0]), int(shape[1])), bands()
