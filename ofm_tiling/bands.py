"""Mosaic bands on their way into the pyramid: regrouped into tile rows, computed ahead in a
thread, halved in parallel column pieces, and spooled to disk between pyramid levels."""
from __future__ import annotations

import contextlib
import errno
import os
import queue
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .errors import OfmTilingError
from .pixels import halve as halve_image

__all__ = ["rechunk", "in_background", "halve", "Spool"]


def rechunk(bands: Iterable[tuple[int, np.ndarray]], shape: tuple[int, int], rows: int, *,
            sample: tuple[int, ...] = (3,), dtype: np.dtype | type = np.uint8) -> Iterator[tuple[int, np.ndarray]]:
    """Regroup top-to-bottom bands of any height into blocks of `rows` rows (the last one shorter).

    Parameters
    ----------
    bands : iterable of (int, ndarray)
        ``(y0, band)`` pairs, contiguous from the top, bands ``(n, width, *sample)`` of `dtype`.
    shape : (int, int)
        (height, width) of the whole image.
    rows : int
        Rows per block.
    sample : tuple of int
        Trailing axes of a pixel: ``(3,)`` for RGB, ``()`` for grey.

    Raises
    ------
    ValueError
        If a band is out of order, of the wrong shape or type, or the bands do not fill `shape`.
    """
    height, width = shape
    want = (width, *sample)

    def fresh(n: int) -> np.ndarray:
        return np.empty((n, *want), dtype)

    block = fresh(min(rows, height))
    filled = done = 0  # rows in `block`; rows emitted before it
    for y0, band in bands:
        band = np.asarray(band)
        if y0 != done + filled:
            raise ValueError(f"bands must be contiguous from the top: expected y0={done + filled}, got {y0}")
        if band.shape[1:] != want or band.dtype != block.dtype:
            raise ValueError(f"band at y0={y0}: expected {block.dtype} (rows, {', '.join(map(str, want))}), "
                             f"got {band.dtype} {band.shape}")
        if y0 + len(band) > height:
            raise ValueError(f"band at y0={y0} with {len(band)} rows runs past the mosaic height {height}")
        if filled == 0 and len(band) == len(block):
            # Already a whole block (band height == tile): pass it on without a copy; `block`
            # is still untouched and serves the next rows unless those are fewer.
            yield done, band
            done += len(band)
            if 0 < height - done < len(block):
                block = fresh(height - done)
            continue
        pos = 0
        while pos < len(band):
            n = min(len(block) - filled, len(band) - pos)
            block[filled : filled + n] = band[pos : pos + n]
            filled, pos = filled + n, pos + n
            if filled == len(block):
                yield done, block
                done, filled = done + filled, 0
                # A fresh buffer: the encoder may still hold tiles that view the previous one.
                block = fresh(min(rows, height - done))
    if done != height:
        raise ValueError(f"bands ended at row {done + filled} of {height}")


def in_background(items: Iterable, depth: int = 1) -> Iterator:
    """Iterate `items` in a worker thread, `depth` items ahead of the consumer.

    The bands are computed (blending releases the GIL) while tifffile's threads compress the
    previous ones, instead of the two taking turns. Exceptions reach the consumer unchanged;
    if the consumer stops early, the worker stops and closes `items`.
    """
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def put(message) -> bool:
        while not stop.is_set():
            try:
                q.put(message, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        it = iter(items)
        try:
            for item in it:
                if not put((True, item)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the consumer, who raises it
            put((False, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=work, name="ofm-tiling-bands", daemon=True)
    worker.start()
    try:
        while True:
            more, item = q.get()
            if not more:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        worker.join()


def halve(block: np.ndarray, pool: ThreadPoolExecutor | None = None, pieces: int = 1) -> np.ndarray:
    """:func:`ofm_tiling.pixels.halve` of a uint8 or uint16 `block`, in `pieces` column ranges run on `pool`."""
    h, w = block.shape[:2]
    out = np.empty(((h + 1) // 2, (w + 1) // 2, *block.shape[2:]), block.dtype)
    step = 2 * -(-w // (2 * max(1, pieces)))  # even, so pieces meet on 2x2 boundaries
    parts = [(block[:, x0 : x0 + step], out[:, x0 // 2 : (x0 + step) // 2]) for x0 in range(0, w, step)]
    if pool is None or len(parts) == 1:
        for part in parts:
            halve_image(*part)
    else:
        for future in [pool.submit(halve_image, *part) for part in parts]:
            future.result()
    return out


class Spool:
    """A temporary image on disk next to the output, written and read in row ranges.

    Plain file I/O rather than a memory map: a write into a mapped file on a full disk kills
    the process with SIGBUS, whereas ``write`` raises an error we can report. The file's pages
    live in the page cache, not in the process's resident memory.

    Parameters
    ----------
    folder, base, tag : str
        The file is ``folder/.base.<random>.tag.tmp``.
    shape : (int, int)
        (height, width) of the image.
    sample, dtype
        Trailing pixel axes and type, as for :func:`rechunk`.
    """

    def __init__(self, folder: str, base: str, tag: str, shape: tuple[int, int], *,
                 sample: tuple[int, ...] = (3,), dtype: np.dtype | type = np.uint8):
        self.shape = shape
        self.sample, self.dtype = sample, np.dtype(dtype)
        self.row_bytes = shape[1] * int(np.prod(sample, dtype=int)) * self.dtype.itemsize
        try:
            fd, self.path = tempfile.mkstemp(prefix=f".{base}.", suffix=f".{tag}.tmp", dir=folder)
        except OSError as exc:
            raise OfmTilingError(folder, f"cannot write here: {(exc.strerror or str(exc)).lower()}") from None
        self._file = os.fdopen(fd, "r+b")

    def write(self, y0: int, rows: np.ndarray) -> None:
        self._file.seek(y0 * self.row_bytes)
        self._file.write(np.ascontiguousarray(rows).data.cast("B"))

    def read(self, y0: int, y1: int) -> np.ndarray:
        out = np.empty((y1 - y0, self.shape[1], *self.sample), self.dtype)
        self._file.flush()
        self._file.seek(y0 * self.row_bytes)
        if self._file.readinto(out.data.cast("B")) != out.nbytes:
            raise OSError(errno.EIO, f"temporary file {self.path} is shorter than expected")
        return out

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray, None]]:
        """``(y0, block, None)`` for blocks of `rows` rows, top to bottom (no precomputed half)."""
        for y0 in range(0, self.shape[0], rows):
            yield y0, self.read(y0, min(y0 + rows, self.shape[0])), None

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.remove(self.path)
