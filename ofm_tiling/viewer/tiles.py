"""Deep-zoom JPEG tiles from a pyramidal OME-TIFF, read one stored tile (or strip) at a time.

Viewer level 0 is the mosaic at full resolution and each further level is 2x smaller (sizes
rounded up, as the OME-TIFF's own levels), down to the first level that fits in one tile. A
level the OME-TIFF holds with exactly that size is re-encoded from its stored tiles; a level it
lacks is made from the level above by `ofm_tiling.pixels.halve`. Memory holds a few stored
segments and one viewer tile (at most one band of stored strips for a striped file), never a whole
level.

8-bit mosaics (RGB or grey) are shown as stored; whole JPEG tiles are copied as they are (a
one-channel JPEG is a grey picture in every browser). A 16-bit grey mosaic is decoded and scaled
for display with the mosaic's one display range (`ofm_tiling.display`, measured on the smallest
stored level as the writer's preview is), then encoded as grey JPEG.
"""
from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..display import IDENTITY, DisplayRange, range_of, to_display
from ..errors import OfmTilingError
from ..options import check_quality
from ..pixels import halve

#: Side of a viewer tile in pixels (the OME-TIFF's own tile size, so its tiles map one to one).
TILE = 512
#: Folder of the tiles inside the viewer folder: TILES/<level>/<column>_<row>.jpg
TILES = "tiles"
#: JPEG quality of the viewer tiles that are re-encoded (edge tiles, levels the file lacks), stored as
#: RGB like the mosaic's tiles: fine stained detail keeps its colour; whole stored tiles are copied.
QUALITY = 90


@dataclass(frozen=True)
class Pyramid:
    """Shape of the deep-zoom pyramid: `levels[k]` is (height, width) of level k, level 0 the largest."""

    levels: tuple[tuple[int, int], ...]
    tile: int = TILE

    def grid(self, level: int) -> tuple[int, int]:
        """(rows, columns) of tiles at `level`."""
        h, w = self.levels[level]
        return math.ceil(h / self.tile), math.ceil(w / self.tile)

    @property
    def tile_count(self) -> int:
        return sum(r * c for r, c in (self.grid(k) for k in range(len(self.levels))))


def pyramid_for(shape: tuple[int, int], tile: int = TILE) -> Pyramid:
    """Levels of a mosaic of `shape` (height, width): halved (rounded up) until one tile holds it."""
    levels = [(int(shape[0]), int(shape[1]))]
    while max(levels[-1]) > tile:
        h, w = levels[-1]
        levels.append(((h + 1) // 2, (w + 1) // 2))
    return Pyramid(tuple(levels), tile)


def tile_path(root: str | os.PathLike, level: int, column: int, row: int) -> Path:
    """Where the tile at (`column`, `row`) of `level` lives under the viewer folder `root`."""
    return Path(root) / TILES / str(level) / f"{column}_{row}.jpg"


class _LevelReader:
    """Regions of one stored OME-TIFF level, decoding each stored segment it needs once per band.

    Decoded segments are kept until the band of viewer tiles moves below them, so each segment
    is decoded once when tiles are asked for row by row, left to right.
    """

    def __init__(self, tif: tifffile.TiffFile, page: tifffile.TiffPage):
        self.tif, self.page = tif, page
        self.shape = (int(page.imagelength), int(page.imagewidth))
        self.sample = (3,) if page.samplesperpixel == 3 else ()
        self.cache: dict[int, tuple[int, int, np.ndarray]] = {}
        # Segment grid: stored tiles, or strips spanning the whole width.
        self.seg_h = int(page.tilelength) if page.is_tiled else int(page.rowsperstrip or self.shape[0])
        self.seg_w = int(page.tilewidth) if page.is_tiled else self.shape[1]
        self.seg_cols = math.ceil(self.shape[1] / self.seg_w)

    def _segment(self, index: int) -> tuple[int, int, np.ndarray]:
        if index not in self.cache:
            fh, page = self.tif.filehandle, self.page
            with self.tif.filehandle.lock:
                fh.seek(page.dataoffsets[index])
                data = fh.read(page.databytecounts[index])
            try:
                seg, where, _ = page.decode(data, index, jpegtables=page.jpegtables)
            except Exception as exc:  # any codec error means a damaged file
                raise OfmTilingError(self.tif.filename, f"damaged image data in segment {index}: {exc}") from None
            if seg is None:
                raise OfmTilingError(self.tif.filename, f"image segment {index} is missing")
            seg = np.asarray(seg)[0]
            self.cache[index] = (int(where[2]), int(where[3]), seg if self.sample else seg[..., 0])
        return self.cache[index]

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] as stored (RGB uint8, grey uint8 or grey uint16)."""
        out = np.empty((y1 - y0, x1 - x0, *self.sample), self.page.dtype)
        for index in self._segments(y0, y1, x0, x1):
            sy, sx, seg = self._segment(index)
            ya, yb = max(y0, sy), min(y1, sy + seg.shape[0], self.shape[0])
            xa, xb = max(x0, sx), min(x1, sx + seg.shape[1], self.shape[1])
            out[ya - y0:yb - y0, xa - x0:xb - x0] = seg[ya - sy:yb - sy, xa - sx:xb - sx]
        # Forget segments entirely above this band or left of this tile in it.
        for index in [i for i, (sy, sx, s) in self.cache.items()
                      if sy + s.shape[0] <= y0 or (sx + s.shape[1] <= x0 and sy + s.shape[0] <= y1)]:
            del self.cache[index]
        return out

    def _segments(self, y0: int, y1: int, x0: int, x1: int) -> Iterator[int]:
        for r in range(y0 // self.seg_h, (y1 - 1) // self.seg_h + 1):
            for c in range(x0 // self.seg_w, (x1 - 1) // self.seg_w + 1):
                yield r * self.seg_cols + c


def _stored_levels(tif: tifffile.TiffFile, path: Path) -> list[tifffile.TiffPage]:
    """Level pages of series 0 after checking they hold 8-bit RGB, 8-bit grey or 16-bit grey."""
    if not tif.series:
        raise OfmTilingError(path, "holds no image")
    pages = []
    for level in tif.series[0].levels:
        page = level.keyframe
        kind = (page.dtype, page.samplesperpixel)
        if (kind not in ((np.uint8, 3), (np.uint8, 1), (np.uint16, 1)) or page.planarconfig != 1
                or page.imagedepth != 1):
            raise OfmTilingError(path, "is not an 8-bit RGB, 8-bit grey or 16-bit grey mosaic "
                                       "(ofm-tiling's OME-TIFF holds one)")
        pages.append(page)
    return pages


def _display_range(tif: tifffile.TiffFile) -> DisplayRange:
    """The mosaic's display range, from its smallest stored level as the writer measured it."""
    smallest = tif.series[0].levels[-1]
    return IDENTITY if smallest.dtype == np.uint8 else range_of(smallest.asarray())  # 8-bit: nothing to read


def write_tiles(mosaic: str | os.PathLike, root: str | os.PathLike, *, quality: int = QUALITY,
                workers: int | None = None, progress: Callable[[int, int], object] | None = None) -> Pyramid:
    """Write the deep-zoom tiles of an OME-TIFF mosaic under ``root/tiles``.

    Parameters
    ----------
    mosaic : path-like
        Pyramidal OME-TIFF (series 0, levels as SubIFDs; 8-bit RGB, 8-bit grey or 16-bit grey).
    root : path-like
        The (new, staging) viewer folder.
    quality : int
        JPEG quality of the tiles, 1-100.
    workers : int, optional
        Threads compressing tiles (default: all cores); decoding stays in order in this thread.
    progress : callable, optional
        Called as ``progress(done, total)`` after every tile.

    Returns
    -------
    Pyramid
        The levels written.
    """
    check_quality(quality)
    path = Path(mosaic)
    try:
        tif = tifffile.TiffFile(path)
    except FileNotFoundError:
        raise OfmTilingError(path, "mosaic not found (is this a finished ofm-tiling output folder?)") from None
    except (OSError, ValueError, tifffile.TiffFileError) as exc:
        raise OfmTilingError(path, f"is not a readable TIFF ({exc})") from None
    workers = max(1, int(workers or os.cpu_count() or 1))
    with tif, ThreadPoolExecutor(workers, thread_name_prefix="ofm-tiling-viewer") as pool:
        stored = {(int(p.imagelength), int(p.imagewidth)): p for p in _stored_levels(tif, path)}
        pyramid = pyramid_for(next(iter(stored)))
        saver = _Saver(pool, 2 * workers, pyramid.tile_count, progress, _display_range(tif))
        previous = None
        for k, shape in enumerate(pyramid.levels):
            page = stored.get(shape)
            read = _LevelReader(tif, page).region if page is not None else _halved(previous, pyramid, k)
            raw = _raw_tiles(tif, page, pyramid)
            for column, row, pixels in _level_tiles(read, pyramid, k, skip=raw.keys()):
                saver.save(pixels, tile_path(root, k, column, row), int(quality))
            for (column, row), data in raw.items():
                saver.copy(data(), tile_path(root, k, column, row))
            previous = read
        saver.finish(0)
    return pyramid


def _raw_tiles(tif: tifffile.TiffFile, page: tifffile.TiffPage | None,
               pyramid: Pyramid) -> dict[tuple[int, int], Callable[[], bytes]]:
    """Stored JPEG tiles that are viewer tiles as they are: whole 512 px tiles of a JPEG level.

    ofm-tiling's OME-TIFF stores each tile as a complete RGB JPEG, so copying it gives the viewer
    the file's exact pixels without decoding or re-encoding; edge tiles (padded in the file) are
    cropped and re-encoded instead. Returns (column, row) -> a reader of the tile's bytes.
    """
    if (page is None or not page.is_tiled or page.compression != 7 or page.jpegtables is not None
            or (page.tilelength, page.tilewidth) != (pyramid.tile, pyramid.tile)):
        return {}
    h, w = int(page.imagelength), int(page.imagewidth)
    columns = math.ceil(w / pyramid.tile)

    def reader(index: int) -> Callable[[], bytes]:
        def read() -> bytes:
            with tif.filehandle.lock:
                tif.filehandle.seek(page.dataoffsets[index])
                return tif.filehandle.read(page.databytecounts[index])
        return read

    return {(c, r): reader(r * columns + c) for r in range(h // pyramid.tile) for c in range(w // pyramid.tile)}


def _copy(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _save(pixels: np.ndarray, path: Path, quality: int, display: DisplayRange) -> None:
    pixels = to_display(pixels, display)
    path.parent.mkdir(parents=True, exist_ok=True)
    # RGB JPEG like the mosaic's own tiles (no YCbCr round trip: 52 dB against 36 dB re-encoded as YCbCr).
    Image.fromarray(pixels).save(path, quality=quality, keep_rgb=True)


class _Saver:
    """JPEG-encodes tiles in a thread pool, with at most `depth` tiles waiting (bounded memory)."""

    def __init__(self, pool: ThreadPoolExecutor, depth: int, total: int,
                 progress: Callable[[int, int], object] | None, display: DisplayRange):
        self.pool, self.depth, self.total, self.progress = pool, depth, total, progress
        self.display = display  # applied to every tile encoded (identity for 8-bit)
        self.pending: deque[Future] = deque()
        self.done = 0

    def save(self, pixels: np.ndarray, path: Path, quality: int) -> None:
        self.pending.append(self.pool.submit(_save, pixels, path, quality, self.display))
        self.finish(self.depth)

    def copy(self, data: bytes, path: Path) -> None:
        self.pending.append(self.pool.submit(_copy, data, path))
        self.finish(self.depth)

    def finish(self, keep: int) -> None:
        """Wait until at most `keep` tiles are pending (collecting any finished ones)."""
        while len(self.pending) > keep or (self.pending and self.pending[0].done()):
            self.pending.popleft().result()
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total)


Region = Callable[[int, int, int, int], np.ndarray]


def _halved(source: Region | None, pyramid: Pyramid, level: int) -> Region:
    """Regions of `level` made by halving the matching regions of the level above."""
    if source is None:
        raise AssertionError("level 0 is always stored")
    above_h, above_w = pyramid.levels[level - 1]

    def region(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return halve(source(2 * y0, min(2 * y1, above_h), 2 * x0, min(2 * x1, above_w)))

    return region


def _level_tiles(read: Region, pyramid: Pyramid, level: int,
                 skip: Collection[tuple[int, int]] = ()) -> Iterator[tuple[int, int, np.ndarray]]:
    """(column, row, pixels) of every tile of `level` but those in `skip`, row by row, edge tiles
    cropped to the image."""
    h, w = pyramid.levels[level]
    rows, columns = pyramid.grid(level)
    t = pyramid.tile
    for row in range(rows):
        for column in range(columns):
            if (column, row) not in skip:
                yield column, row, read(row * t, min(h, (row + 1) * t), column * t, min(w, (column + 1) * t))
