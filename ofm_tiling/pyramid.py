"""The pyramidal OME-TIFF: its options, its plan of levels, and a writer that streams bands into it.

Level 0 is written tile by tile as the bands arrive, so a mosaic larger than memory never exists
in memory. Each level is halved on the fly into a temporary spool next to the output, which then
feeds the next level; every level is a quarter of the one before, so the extra disk traffic is
~1/3 of the mosaic's size. The layout is what QuPath, Bio-Formats (Fiji) and tifffile expect:
one OME image (series 0), the reduced levels as SubIFDs of level 0, square tiles (512 px).

JPEG tiles of colour images are RGB JPEG (no colour transform, no chroma subsampling). YCbCr
without subsampling, written before, is decoded with its colour transform applied twice by
Bio-Formats (wrong colours); subsampled YCbCr reads correctly but caps the colour fidelity of
H&E at ~33 dB whatever the quality. RGB JPEG reads bit-identically in tifffile and Bio-Formats
and keeps full colour resolution (measured in ``benchmarks/jpeg_colour.py``).

16-bit grey mosaics are stored losslessly (deflate or none): baseline JPEG holds 8 bits. The
writer refuses JPEG for them; `compression_for` is the run's rule that turns the default JPEG into
deflate for 16-bit tiles, with a note. The preview of a 16-bit mosaic is scaled for display
(`ofm_tiling.display`) with the range measured on the smallest written level.
"""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import tifffile

from .bands import Spool, halve, in_background, rechunk
from .display import IDENTITY, DisplayRange, display_range, sample_step, to_display
from .errors import OfmTilingError
from .files import atomic_file
from .pixels import pixel_form
from .preview import preview_shape, preview_width, write_preview_from_rows
from .tilecodec import COMPRESSIONS, Codec, PixelFormat, check_options, compression_for

__all__ = ["COMPRESSIONS", "Codec", "LevelPlan", "PixelFormat", "PyramidWriter", "check_options", "compression_for",
           "plan_levels", "write_ome_tiff"]

@dataclass(frozen=True)
class LevelPlan:
    """The levels to compute: ``shapes[:written]`` go into the file; any more only feed the preview."""

    shapes: list[tuple[int, int]]
    written: int
    preview_level: int | None = None
    preview_shape: tuple[int, int] | None = None


def plan_levels(shape: tuple[int, int], tile: int, levels: int | None = None,
                preview: int | None = None) -> LevelPlan:
    """Level shapes, each 2x smaller (rounded up), and the level the preview is made from.

    Without `levels`, halve until the longer side fits in one tile. With a `preview` width, the
    preview comes from the smallest level still at least that wide, so it is only ever reduced.
    """
    shapes = [shape]
    while (levels is None and max(shapes[-1]) > tile) or (levels is not None and len(shapes) < levels):
        if shapes[-1] == (1, 1):
            break
        shapes.append(_half(shapes[-1]))
    if preview is None:
        return LevelPlan(shapes, len(shapes))
    target = preview_width(shape, preview)
    extra = list(shapes)
    while extra[-1][1] > 1 and (extra[-1][1] + 1) // 2 >= target:
        extra.append(_half(extra[-1]))
    level = max(k for k, (_, w) in enumerate(extra) if w >= target)
    return LevelPlan(extra[: max(len(shapes), level + 1)], len(shapes), level,
                     preview_shape(extra[level], target))


def _half(shape: tuple[int, int]) -> tuple[int, int]:
    return (shape[0] + 1) // 2, (shape[1] + 1) // 2


class PyramidWriter:
    """A tiled pyramidal OME-TIFF written from a stream of bands; it appears only once complete.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, conventionally ``*.ome.tif``. Its folder must exist.
    shape : tuple of int
        (height, width), or (height, width, channels).
    channels : {3, 1}
        RGB or grey pixels (a 3-element `shape` must agree).
    dtype : numpy dtype
        uint8, or uint16 (grey, stored with compression "deflate" or "none").
    pixel_type : {"rgb8", "grey8", "grey16"}, optional
        Sets `channels` and `dtype` from one of `ofm_tiling.pixels.PIXEL_TYPES` instead.
    pixel_size_um : float, optional
        Size of a level-0 pixel in micrometres, stored as OME PhysicalSizeX/Y (and as TIFF
        resolution on every level).
    compression, quality
        As for :func:`check_options`.
    tile : int
        TIFF tile size in pixels, a multiple of 16.
    levels : int, optional
        Number of resolution levels including level 0. Default: halve until the longer side
        fits in one tile.
    preview_path : str or os.PathLike, optional
        Also write a JPEG preview here, made from the smallest level at least `preview_width`
        wide (no second pass over level 0).
    preview_width : int
        Preview width in pixels (never wider than the mosaic). A 16-bit preview is scaled for
        display (:mod:`ofm_tiling.display`) with the range of the smallest written level.
    workers : int
        Threads compressing tiles and halving blocks.
    name : str
        OME image name.
    progress : callable, optional
        Called as ``progress(rows_done, total_rows)`` with rows counted over all written levels.

    Raises
    ------
    ValueError
        For a bad option, naming the parameter; raised here, before any pixel is written.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], *, channels: int = 3,
                 dtype: np.dtype | type = np.uint8, pixel_size_um: float | None = None, compression: str = "jpeg",
                 quality: int = 90, tile: int = 512, levels: int | None = None,
                 preview_path: str | os.PathLike | None = None, preview_width: int = 2000, workers: int = 2,
                 name: str = "mosaic", progress: Callable[[int, int], object] | None = None,
                 pixel_type: str | None = None):
        self.path = path
        if pixel_type is not None:
            form = pixel_form(pixel_type)
            channels, dtype = (3 if form.sample else 1), form.dtype
        self.shape, self.pixels = _check_shape(shape, channels, dtype)
        self.codec = check_options(compression=compression, quality=quality, dtype=self.pixels.dtype)
        self.tile = int(tile)
        if self.tile < 16 or self.tile % 16:
            raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
        if levels is not None and int(levels) < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        if pixel_size_um is not None and not float(pixel_size_um) > 0:
            raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}")
        if preview_path is not None and int(preview_width) < 1:
            raise ValueError(f"preview_width must be >= 1, got {preview_width}")
        self.pixel_size_um = None if pixel_size_um is None else float(pixel_size_um)
        self.preview_path = preview_path
        self.plan = plan_levels(self.shape, self.tile, None if levels is None else int(levels),
                                None if preview_path is None else int(preview_width))
        self.workers = max(1, int(workers))
        self.name = name
        self.progress = progress
        self._rows_done = 0
        self._spools: dict[int, Spool] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._smallest: list[np.ndarray] = []  # a strided sample of the smallest written level
        self.display: DisplayRange | None = None

    # --- the table of contents -----------------------------------------------------------------

    def write(self, bands: Iterable[tuple[int, np.ndarray]]) -> dict:
        """Write the file (and preview) from `bands`; return what was written.

        Parameters
        ----------
        bands : iterable of (int, ndarray)
            ``(y0, band)`` pairs, top to bottom, contiguous, bands ``(rows, width, 3)`` (RGB) or
            ``(rows, width)`` (grey) of any height (e.g. :func:`ofm_tiling.fuse.fuse_bands`). It is
            consumed in a background thread, and a yielded band must not be modified afterwards.
            A generator is closed if writing fails.

        Returns
        -------
        dict
            ``path``, ``shape``, ``levels`` (list of (h, w)), ``pixel_size_um``, ``tile``,
            ``compression``, ``preview_path`` and ``preview_shape`` (None without preview), and
            ``display_range`` ((lo, hi) shown black and white, :mod:`ofm_tiling.display`).

        Raises
        ------
        OfmTilingError
            If the folder is missing or not writable, or the disk is full. Temporary files are
            removed on any error, including one raised by `bands`.
        """
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="ofm-tiling-halve")
        level0 = self._level0(bands)
        try:
            with atomic_file(self.path) as tmp:
                self._write_levels(tmp, level0)
                self._write_preview()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OfmTilingError(self._folder(), "cannot write here: the disk is full") from exc
            raise
        finally:
            self._release(level0, bands)
        return self._info()

    # --- stages --------------------------------------------------------------------------------

    def _level0(self, bands: Iterable[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Blocks of tile rows and their halves, computed in a thread ahead of the encoder."""
        blocks = rechunk(bands, self.shape, self.tile, sample=self.pixels.sample, dtype=self.pixels.dtype)
        halves = len(self.plan.shapes) > 1
        return in_background((y0, b, self._halve(b) if halves else None) for y0, b in blocks)

    def _write_levels(self, tmp: str, source: Iterator) -> None:
        tif = tifffile.TiffWriter(tmp, bigtiff=True, ome=True)
        try:
            for k in range(len(self.plan.shapes)):
                source = self._write_level(tif, k, source)
        except BaseException:
            with contextlib.suppress(Exception):
                tif.close()  # release the file; atomic_file deletes it
            raise
        tif.close()

    def _write_level(self, tif: tifffile.TiffWriter, k: int, source: Iterator) -> Iterator:
        """Write level `k` from `source`, halving it into the next level's spool as it streams
        past; return the next level's source."""
        shapes = self.plan.shapes
        sinks: list[Callable[[int, np.ndarray, np.ndarray | None], None]] = []
        if k + 1 < len(shapes):
            nxt = self._spools[k + 1] = self._spool(f"level{k + 1}", shapes[k + 1])
            sinks.append(lambda y0, b, half: nxt.write(y0 // 2, self._halve(b) if half is None else half))
        if k == 0 and self.plan.preview_level == 0:
            keep = self._spools[0] = self._spool("level0", shapes[0])
            sinks.append(lambda y0, b, half: keep.write(y0, b))
        if k == self.plan.written - 1 and self.pixels.dtype != np.uint8:  # 8-bit is shown as it is
            sinks.append(self._sample_sink(shapes[k]))
        blocks = _fed(source, sinks)
        if k < self.plan.written:
            tif.write(self._tiles(blocks), shape=(*shapes[k], *self.pixels.sample), dtype=self.pixels.dtype,
                      **self._page_options(k))
        else:
            for _ in blocks:  # a level computed only for the preview
                pass
        if k > 0 and k != self.plan.preview_level:
            self._spools.pop(k).remove()
        return self._spools[k + 1].blocks(self.tile) if k + 1 < len(shapes) else iter(())

    def _sample_sink(self, shape: tuple[int, int]) -> Callable[[int, np.ndarray, np.ndarray | None], None]:
        """Keeps the rows of the smallest written level that the display range is measured on."""
        step = sample_step(shape)

        def keep(y0: int, block: np.ndarray, half: np.ndarray | None) -> None:
            self._smallest.append(block[(-y0) % step :: step, ::step].copy())

        return keep

    def _write_preview(self) -> None:
        """The display range, then the preview from its spooled level (kept while the pyramid was written)."""
        self.display = display_range(np.concatenate(self._smallest)) if self._smallest else IDENTITY
        self._smallest.clear()
        level, shape = self.plan.preview_level, self.plan.preview_shape
        if self.preview_path is not None and level is not None and shape is not None:
            display = self.display
            scale = None if self.pixels.dtype == np.uint8 else lambda rows: to_display(rows, display)
            write_preview_from_rows(self.preview_path, self._spools[level], shape, display=scale)

    def _tiles(self, blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """Tiles of each block, left to right, reporting progress after each block."""
        total = sum(h for h, _ in self.plan.shapes[: self.plan.written])
        for block in blocks:
            for x0 in range(0, block.shape[1], self.tile):
                yield block[:, x0 : x0 + self.tile]  # tifffile pads partial edge tiles
            self._rows_done += len(block)
            if self.progress is not None:
                self.progress(self._rows_done, total)

    def _page_options(self, k: int) -> dict:
        """tifffile keywords of level `k`: codec, tiling, resolution, and OME metadata or SubIFD."""
        h, w = self.plan.shapes[k]
        opts = {**self.codec.tifffile_options(self.pixels), "planarconfig": "contig",
                "tile": (self.tile, self.tile), "maxworkers": self.workers}
        if self.pixel_size_um is not None:
            res = 1e4 / (self.pixel_size_um * self.shape[1] / w)  # pixels per cm at this level
            opts.update(resolution=(res, res), resolutionunit="CENTIMETER")
        if k == 0:
            opts.update(subifds=self.plan.written - 1 or None, metadata=self._ome(), software="ofm-tiling")
        else:
            opts.update(subfiletype=1)  # a reduced-resolution image, in level 0's SubIFDs
        # Let the encoder take one row of tiles at a time, not its 512 MB default.
        opts["buffersize"] = self.tile * self.tile * self.pixels.bytes * -(-w // self.tile)
        return opts

    def _ome(self) -> dict:
        meta: dict = {"axes": "YXS" if self.pixels.channels == 3 else "YX", "Name": self.name}
        if self.pixel_size_um is not None:
            meta.update(PhysicalSizeX=self.pixel_size_um, PhysicalSizeXUnit="µm",
                        PhysicalSizeY=self.pixel_size_um, PhysicalSizeYUnit="µm")
        return meta

    # --- helpers -------------------------------------------------------------------------------

    def _halve(self, block: np.ndarray) -> np.ndarray:
        return halve(block, self._pool, self.workers)

    def _folder(self) -> str:
        return os.path.dirname(os.path.abspath(os.fspath(self.path)))

    def _spool(self, tag: str, shape: tuple[int, int]) -> Spool:
        base = os.path.basename(os.fspath(self.path))
        return Spool(self._folder(), base, tag, shape, sample=self.pixels.sample, dtype=self.pixels.dtype)

    def _release(self, level0: Iterator, bands: Iterable) -> None:
        """Stop the band thread, tile decoders and halving threads now, not when an exception's
        traceback (which keeps these generators alive) is eventually dropped; remove the spools."""
        close = getattr(level0, "close", None)
        if close is not None:
            close()
        if hasattr(bands, "close"):
            bands.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for spool in self._spools.values():
            spool.remove()
        self._spools.clear()

    def _info(self) -> dict:
        return {"path": os.fspath(self.path), "shape": (*self.shape, *self.pixels.sample),
                "levels": self.plan.shapes[: self.plan.written], "pixel_size_um": self.pixel_size_um,
                "tile": self.tile, "compression": self.codec.name,
                "preview_path": None if self.preview_path is None else os.fspath(self.preview_path),
                "preview_shape": self.plan.preview_shape,
                "display_range": None if self.display is None else self.display.to_json()}


def _fed(source: Iterator, sinks: list[Callable]) -> Iterator[np.ndarray]:
    """Each block of `source` after handing ``(y0, block, half)`` to every sink."""
    for y0, block, half in source:
        for sink in sinks:
            sink(y0, block, half)
        yield block


def _check_shape(shape: tuple[int, ...], channels: int, dtype) -> tuple[tuple[int, int], PixelFormat]:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if len(shape) == 3 and shape[2] != channels or len(shape) not in (2, 3) or min(shape[:2]) < 1:
        raise ValueError(f"shape must be (height, width) or (height, width, {channels}), got {tuple(shape)}")
    return (int(shape[0]), int(shape[1])), PixelFormat(channels, np.dtype(dtype))


def write_ome_tiff(path: str | os.PathLike, shape: tuple[int, ...], bands: Iterable[tuple[int, np.ndarray]],
                   **options) -> dict:
    """Write a mosaic, streamed as bands, to a tiled pyramidal OME-TIFF: ``PyramidWriter(path, shape,
    **options).write(bands)`` (see :class:`PyramidWriter` for the options and the result)."""
    return PyramidWriter(path, shape, **options).write(bands)
