"""Writing mosaics: streamed pyramidal OME-TIFF, JPEG preview, and atomic file replacement.

The full-resolution level is written tile by tile as the bands arrive, so a mosaic larger than
memory never exists in memory. Each level is halved on the fly into a temporary file next to
the output, which then feeds the next level; every level is a quarter of the one before, so
the extra disk traffic is ~1/3 of the mosaic's size.
"""
from __future__ import annotations

import contextlib
import errno
import os
import queue
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tifffile
from PIL import Image

from .errors import OfmTilingError

__all__ = ["write_ome_tiff", "write_preview", "atomic_path"]

_JPEG_MAX_SIDE = 65500  # JPEG cannot store images taller or wider than 65535 pixels


def _reserve(folder: str, base: str, suffix: str) -> str:
    """Create a new empty hidden file in `folder` and return its path."""
    for _ in range(100):
        name = os.path.join(folder, f".{base}.{secrets.token_hex(4)}{suffix}")
        try:
            # Mode "x" honours the umask, so the renamed result gets normal permissions.
            with open(name, "xb"):
                return name
        except FileExistsError:
            continue
        except OSError as exc:
            raise OfmTilingError(folder, f"cannot write here: {(exc.strerror or str(exc)).lower()}") from None
    raise OfmTilingError(folder, "cannot write here: no free temporary file name")


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Write a file under a temporary name and move it onto `path` only if writing succeeds.

    Parameters
    ----------
    path : str or os.PathLike
        Final file name. Its folder must exist.

    Yields
    ------
    str
        A new, empty, hidden file in the same folder (so the final rename is atomic); the body
        of the ``with`` block writes to it. On success it replaces `path` (``os.replace``); if
        the block raises, it is deleted and `path` is left as it was.

    Raises
    ------
    OfmTilingError
        If the folder does not exist or is not writable.
    """
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    tmp = _reserve(folder, base, ".tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _resized_width(shape: tuple[int, int], width: int) -> int:
    """Preview width: `width` at most, never enlarged, height within JPEG's limit."""
    h, w = shape
    return max(1, min(int(width), w, (_JPEG_MAX_SIDE * w) // h))


def write_preview(path: str | os.PathLike, image: np.ndarray, *, width: int = 2000, quality: int = 85) -> None:
    """Save a downscaled JPEG of an RGB image (atomically).

    Parameters
    ----------
    path : str or os.PathLike
        Output JPEG file.
    image : (H, W, 3) ndarray
        uint8 RGB image.
    width : int, optional
        Width of the preview in pixels. Images are never enlarged, and very tall images are
        made narrower so the height stays within JPEG's 65535-pixel limit.
    quality : int, optional
        JPEG quality.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    new_w = _resized_width((h, w), width)
    new_h = max(1, round(h * new_w / w))
    im = Image.fromarray(image)
    if (new_w, new_h) != (w, h):
        # reducing_gap: a fast integer box reduction first, then Lanczos for the remainder.
        im = im.resize((new_w, new_h), Image.LANCZOS, reducing_gap=3.0)
    with atomic_path(path) as tmp:
        im.save(tmp, format="JPEG", quality=quality, optimize=True)


def _preview_from_spool(path: str | os.PathLike, spool: "_Spool", shape: tuple[int, int], *,
                        quality: int = 85, rows: int = 256) -> None:
    """Resize a spooled pyramid level to `shape` a block of output rows at a time.

    Each block reads only the source rows it needs plus the Lanczos support, and resizes them with
    a sub-pixel source box, so memory stays at the preview's own size and blocks join seamlessly.
    The preview is assembled in Pillow and saved without Huffman optimisation, which would buffer
    every DCT coefficient of the image (twice the preview's size) for a file ~5 % smaller.
    """
    height, width = shape
    src_h, src_w = spool.shape
    step = src_h / height  # source rows per preview row
    margin = int(np.ceil(3 * step)) + 2
    out = Image.new("RGB", (width, height))
    for o0 in range(0, height, rows):
        o1 = min(height, o0 + rows)
        s0, s1 = o0 * step, o1 * step
        r0, r1 = max(0, int(s0) - margin), min(src_h, int(np.ceil(s1)) + margin)
        block = Image.fromarray(spool.read(r0, r1))
        out.paste(block.resize((width, o1 - o0), Image.LANCZOS, box=(0, s0 - r0, src_w, s1 - r0)), (0, o0))
    with atomic_path(path) as tmp:
        out.save(tmp, format="JPEG", quality=quality)


class _Spool:
    """A temporary uint8 (H, W, 3) image on disk, written and read in row ranges.

    Plain file I/O rather than a memory map: a write into a mapped file on a full disk kills
    the process with SIGBUS, whereas ``write`` raises an error we can report. The file's pages
    live in the page cache, not in the process's resident memory.
    """

    def __init__(self, folder: str, base: str, tag: str, shape: tuple[int, int]):
        self.shape = shape
        self.row_bytes = shape[1] * 3
        self.path = _reserve(folder, base, f".{tag}.tmp")
        self._file = open(self.path, "r+b")

    def write(self, y0: int, rows: np.ndarray) -> None:
        self._file.seek(y0 * self.row_bytes)
        self._file.write(memoryview(np.ascontiguousarray(rows)).cast("B"))

    def read(self, y0: int, y1: int) -> np.ndarray:
        out = np.empty((y1 - y0, self.shape[1], 3), np.uint8)
        self._file.flush()
        self._file.seek(y0 * self.row_bytes)
        if self._file.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise OSError(errno.EIO, f"temporary file {self.path} is shorter than expected")
        return out

    def blocks(self, rows: int) -> Iterator[tuple[int, np.ndarray, None]]:
        for y0 in range(0, self.shape[0], rows):
            yield y0, self.read(y0, min(y0 + rows, self.shape[0])), None

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
        _remove(self.path)


def _halve_into(block: np.ndarray, out: np.ndarray) -> None:
    """Write the 2x2 rounded means of `block` into `out`; an odd last row or column is averaged
    over the pixels that exist. numpy releases the GIL throughout, so pieces run in parallel."""
    h, w = block.shape[:2]
    he, we = h - h % 2, w - w % 2
    rows = np.add(block[0:he:2], block[1:he:2], dtype=np.uint16)  # pairs of whole rows: fast
    s = np.empty((he // 2, we // 2, 3), np.uint16)
    for c in range(3):  # one channel at a time, so numpy's inner loops run along whole rows
        np.add(rows[:, 0:we:2, c], rows[:, 1:we:2, c], out=s[:, :, c])
    s += 2
    s >>= 2
    out[: he // 2, : we // 2] = s
    if w % 2:
        out[: he // 2, -1] = (rows[:, -1] + 1) >> 1
    if h % 2:
        row = np.add(block[-1, 0:we:2], block[-1, 1:we:2], dtype=np.uint16)
        out[-1, : we // 2] = (row + 1) >> 1
        if w % 2:
            out[-1, -1] = block[-1, -1]


def _halve(block: np.ndarray, pool: ThreadPoolExecutor | None = None, pieces: int = 1) -> np.ndarray:
    """2x smaller by the rounded mean of each 2x2 block, in `pieces` column ranges on `pool`."""
    h, w = block.shape[:2]
    out = np.empty(((h + 1) // 2, (w + 1) // 2, 3), np.uint8)
    step = 2 * -(-w // (2 * max(1, pieces)))  # even, so pieces meet on 2x2 boundaries
    parts = [(block[:, x0 : x0 + step], out[:, x0 // 2 : (x0 + step) // 2]) for x0 in range(0, w, step)]
    if pool is None or len(parts) == 1:
        for part in parts:
            _halve_into(*part)
    else:
        for future in [pool.submit(_halve_into, *part) for part in parts]:
            future.result()
    return out


def _rechunk(
    bands: Iterable[tuple[int, np.ndarray]], shape: tuple[int, int], rows: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Regroup top-to-bottom bands of any height into blocks of `rows` rows (last one shorter)."""
    height, width = shape
    block = np.empty((min(rows, height), width, 3), np.uint8)
    filled = done = 0  # rows in `block`; rows emitted before it
    for y0, band in bands:
        band = np.asarray(band)
        if y0 != done + filled:
            raise ValueError(f"bands must be contiguous from the top: expected y0={done + filled}, got {y0}")
        if band.ndim != 3 or band.shape[1:] != (width, 3) or band.dtype != np.uint8:
            raise ValueError(f"band at y0={y0}: expected uint8 (rows, {width}, 3), got {band.dtype} {band.shape}")
        if y0 + len(band) > height:
            raise ValueError(f"band at y0={y0} with {len(band)} rows runs past the mosaic height {height}")
        if filled == 0 and len(band) == len(block):
            # Already a whole block (band_height == tile): pass it on without a copy; `block`
            # is still untouched and serves the next rows unless those are fewer.
            yield done, band
            done += len(band)
            if 0 < height - done < len(block):
                block = np.empty((height - done, width, 3), np.uint8)
            continue
        pos = 0
        while pos < len(band):
            n = min(len(block) - filled, len(band) - pos)
            block[filled : filled + n] = band[pos : pos + n]
            filled += n
            pos += n
            if filled == len(block):
                yield done, block
                done += filled
                filled = 0
                # A fresh buffer: the encoder may still hold tiles that view the previous one.
                block = np.empty((min(rows, height - done), width, 3), np.uint8)
    if done != height:
        raise ValueError(f"bands ended at row {done + filled} of {height}")


def _in_background(items: Iterable, depth: int = 1) -> Iterator:
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


def _level_shapes(shape: tuple[int, int], tile: int, levels: int | None) -> list[tuple[int, int]]:
    shapes = [shape]
    while (levels is None and max(shapes[-1]) > tile) or (levels is not None and len(shapes) < levels):
        h, w = shapes[-1]
        if h == 1 and w == 1:
            break
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def write_ome_tiff(
    path: str | os.PathLike,
    shape: tuple[int, ...],
    bands: Iterable[tuple[int, np.ndarray]],
    *,
    pixel_size_um: float | None = None,
    tile: int = 512,
    compression: str = "jpeg",
    quality: int = 90,
    levels: int | None = None,
    preview_path: str | os.PathLike | None = None,
    preview_width: int = 2000,
    workers: int = 2,
    name: str = "mosaic",
    progress: Callable[[int, int], object] | None = None,
) -> dict:
    """Write an RGB mosaic, streamed as bands, to a tiled pyramidal OME-TIFF.

    Level 0 is written tile by tile as the bands arrive; each lower level is 2x smaller (2x2
    area mean) and stored as a SubIFD of level 0, as QuPath, Bio-Formats (Fiji) and tifffile
    expect. The file appears under `path` only once complete.

    Parameters
    ----------
    path : str or os.PathLike
        Output file, conventionally ``*.ome.tif``. Its folder must exist.
    shape : tuple of int
        (height, width) or (height, width, 3) of the mosaic.
    bands : iterable of (int, ndarray)
        ``(y0, band)`` pairs, top to bottom, contiguous, bands uint8 ``(rows, width, 3)`` of any
        height (e.g. from :func:`ofm_tiling.fuse.fuse_bands`). It is consumed in a background
        thread, and a yielded band must not be modified afterwards (it may still be in use).
        A generator is closed if writing fails.
    pixel_size_um : float, optional
        Size of a level-0 pixel in micrometres, stored as OME PhysicalSizeX/Y (and as TIFF
        resolution on every level).
    tile : int, optional
        TIFF tile size in pixels, a multiple of 16.
    compression : {"jpeg", "deflate", "zlib", "none"}, optional
        Tile compression. JPEG is stored as YCbCr without chroma subsampling (4:4:4).
    quality : int, optional
        JPEG quality (1-100).
    levels : int, optional
        Number of resolution levels including level 0. Default: halve until the longer side fits
        in one tile.
    preview_path : str or os.PathLike, optional
        Also write a JPEG preview here, made from the smallest pyramid level at least
        `preview_width` wide (no second pass over level 0).
    preview_width : int, optional
        Preview width in pixels (never wider than the mosaic).
    workers : int, optional
        Threads compressing tiles.
    name : str, optional
        OME image name.
    progress : callable, optional
        Called as ``progress(rows_done, total_rows)`` with rows counted over all levels.

    Returns
    -------
    dict
        ``path``, ``shape`` (H, W, 3), ``levels`` (list of (h, w)), ``pixel_size_um``,
        ``tile``, ``compression``, ``preview_path`` and ``preview_shape`` (None without preview).

    Raises
    ------
    OfmTilingError
        If the folder is missing or not writable, or the disk is full. Temporary files are
        removed on any error, including one raised by `bands`.
    """
    height, width = (int(v) for v in shape[:2])
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 3) or height < 1 or width < 1:
        raise ValueError(f"shape must be (height, width) or (height, width, 3), got {shape}")
    tile = int(tile)
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if levels is not None and int(levels) < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if pixel_size_um is not None and not float(pixel_size_um) > 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}")
    codec = _compression_options(compression, quality)
    shapes = _level_shapes((height, width), tile, None if levels is None else int(levels))

    shapes_all = list(shapes)  # written levels, plus any computed only for the preview
    preview_level, preview_shape = None, None
    if preview_path is not None:
        target = _resized_width((height, width), preview_width)
        while shapes_all[-1][1] > 1 and (shapes_all[-1][1] + 1) // 2 >= target:
            h, w = shapes_all[-1]
            shapes_all.append(((h + 1) // 2, (w + 1) // 2))
        # The smallest level still at least `target` wide, so the preview is only ever reduced.
        preview_level = max(k for k, (_, w) in enumerate(shapes_all) if w >= target)
        shapes_all = shapes_all[: max(len(shapes), preview_level + 1)]
        hp, wp = shapes_all[preview_level]
        preview_shape = (max(1, round(hp * target / wp)), target)  # as write_preview computes it

    opts = dict(photometric="rgb", planarconfig="contig", tile=(tile, tile), maxworkers=max(1, int(workers)), **codec)
    meta = {"axes": "YXS", "Name": name}
    if pixel_size_um is not None:
        meta.update(PhysicalSizeX=float(pixel_size_um), PhysicalSizeXUnit="µm",
                    PhysicalSizeY=float(pixel_size_um), PhysicalSizeYUnit="µm")

    folder, base = os.path.split(os.path.abspath(os.fspath(path)))
    spools: dict[int, _Spool] = {}
    # Blocks of level 0 and their halves (for level 1) are computed in a thread, overlapping
    # tifffile's compression of the blocks before them.
    halves = len(shapes_all) > 1
    workers = max(1, int(workers))
    halver = ThreadPoolExecutor(workers, thread_name_prefix="ofm-tiling-halve") if workers > 1 else None

    def halve(b: np.ndarray) -> np.ndarray:
        return _halve(b, halver, workers)

    blocks = _rechunk(bands, (height, width), tile)
    level0 = _in_background((y0, b, halve(b) if halves else None) for y0, b in blocks)
    try:
        with atomic_path(path) as tmp:
            tif = tifffile.TiffWriter(tmp, bigtiff=True, ome=True)
            try:
                _write_pyramid(tif, level0, shapes_all, len(shapes), preview_level, spools, (folder, base),
                               opts, meta, pixel_size_um, progress, halve)
            except BaseException:
                with contextlib.suppress(Exception):
                    tif.close()  # release the file; atomic_path deletes it
                raise
            tif.close()
            if preview_level is not None:
                _preview_from_spool(preview_path, spools[preview_level], preview_shape)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OfmTilingError(folder, "cannot write here: the disk is full") from exc
        raise
    finally:
        # Stop the band thread and the tile decoders now, not when the exception's traceback
        # (which keeps these generators alive) is eventually dropped.
        level0.close()
        if hasattr(bands, "close"):
            bands.close()
        if halver is not None:
            halver.shutdown(wait=True, cancel_futures=True)
        for spool in spools.values():
            spool.remove()
    return {
        "path": os.fspath(path),
        "shape": (height, width, 3),
        "levels": shapes,
        "pixel_size_um": pixel_size_um,
        "tile": tile,
        "compression": compression,
        "preview_path": None if preview_path is None else os.fspath(preview_path),
        "preview_shape": preview_shape,
    }


def _write_pyramid(tif, level0, shapes, n_written, preview_level, spools, where, opts, meta, pixel_size_um, progress,
                   halve):
    """Write level 0 from `level0` (y0, block, half-size block) and each further level from a
    spool of the previous one, halving every level into the next spool as it streams past."""
    tile = opts["tile"][0]
    width = shapes[0][1]
    total_rows = sum(h for h, _ in shapes[:n_written])
    rows_done = 0

    def tiles(blocks, sinks, written):
        nonlocal rows_done
        for y0, block, half in blocks:
            for sink in sinks:
                sink(y0, block, half)
            if written:
                for x0 in range(0, block.shape[1], tile):
                    yield block[:, x0 : x0 + tile]  # tifffile pads partial edge tiles
                rows_done += len(block)
                if progress is not None:
                    progress(rows_done, total_rows)

    source = level0
    for k, (h, w) in enumerate(shapes):
        sinks = []
        if k + 1 < len(shapes):
            spools[k + 1] = _Spool(*where, f"level{k + 1}", shapes[k + 1])
            sinks.append(lambda y0, b, half, s=spools[k + 1]: s.write(y0 // 2, halve(b) if half is None else half))
        if k == 0 and preview_level == 0:
            spools[0] = _Spool(*where, "level0", (h, w))
            sinks.append(lambda y0, b, half: spools[0].write(y0, b))
        if k < n_written:
            kwargs = dict(opts)
            if pixel_size_um is not None:
                res = 1e4 / (pixel_size_um * width / w)  # pixels per cm at this level
                kwargs.update(resolution=(res, res), resolutionunit="CENTIMETER")
            if k == 0:
                kwargs.update(subifds=n_written - 1 or None, metadata=meta, software="ofm-tiling")
            else:
                kwargs.update(subfiletype=1)  # a reduced-resolution image, in level 0's SubIFDs
            # Let the encoder take one row of tiles at a time, not its 512 MB default.
            kwargs["buffersize"] = tile * tile * 3 * -(-w // tile)
            tif.write(tiles(source, sinks, True), shape=(h, w, 3), dtype=np.uint8, **kwargs)
        else:
            for _ in tiles(source, sinks, False):  # a level computed only for the preview
                pass
        if k > 0 and k != preview_level:
            spools.pop(k).remove()
        if k + 1 < len(shapes):
            source = spools[k + 1].blocks(tile)


def _compression_options(compression: str, quality: int) -> dict:
    c = str(compression).lower()
    if c == "jpeg":
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"quality must be in 1..100, got {quality}")
        # Full-resolution colour (4:4:4): stained tissue has fine colour detail, and 4:2:0
        # chroma subsampling costs ~4 dB PSNR on H&E at quality 90 for ~1/3 smaller files.
        return {"compression": "jpeg", "compressionargs": {"level": int(quality)}, "subsampling": (1, 1)}
    if c in ("deflate", "zlib"):
        # Horizontal differencing typically shrinks deflated RGB micrographs by a further ~20%.
        return {"compression": "zlib", "predictor": True}
    if c == "none":
        return {"compression": None}
    raise ValueError(f"compression must be 'jpeg', 'deflate', 'zlib' or 'none', got {compression!r}")
