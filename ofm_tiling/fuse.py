"""Streaming fusion of placed tiles into one RGB mosaic, band by band.

The mosaic is produced as horizontal bands, top to bottom, so that it never has to exist in
memory as a whole (a 50 x 50 scan of 8 MP tiles is ~16 Gpx per channel). Each tile is decoded
once, a little ahead of the first band that needs it, and dropped as soon as the bands have
passed its bottom edge: memory scales with about two rows of tiles, not with the mosaic.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["mosaic_shape", "fuse_bands"]


def _offsets(positions: ArrayLike) -> np.ndarray:
    """Integer (x, y) top-left corners with the minimum shifted to 0."""
    pos = np.asarray(positions, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise ValueError(f"positions must be an (N, 2) array with N >= 1, got shape {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError("positions contain NaN or infinity")
    return np.rint(pos - pos.min(axis=0)).astype(np.int64)


def _check_tile_shape(tile_shape: tuple[int, int]) -> tuple[int, int]:
    th, tw = (int(v) for v in tile_shape[:2])
    if th < 1 or tw < 1:
        raise ValueError(f"tile_shape must be positive, got {tile_shape}")
    return th, tw


def mosaic_shape(positions: ArrayLike, tile_shape: tuple[int, int]) -> tuple[int, int]:
    """Size of the mosaic that holds all tiles.

    Parameters
    ----------
    positions : (N, 2) array_like
        Top-left corner of each tile as (x, y) = (column, row) in pixels, in any frame.
    tile_shape : (int, int)
        (height, width) shared by all tiles.

    Returns
    -------
    (int, int)
        (height, width) after shifting the minimum position to 0 and rounding to whole pixels.
    """
    off = _offsets(positions)
    th, tw = _check_tile_shape(tile_shape)
    return int(off[:, 1].max()) + th, int(off[:, 0].max()) + tw


def _overlap_widths(off: np.ndarray, tile_shape: tuple[int, int]) -> tuple[float, float]:
    """Median overlap (pixels) of left/right and of top/bottom neighbours; 0 where none."""
    th, tw = tile_shape
    across, down = [np.empty(0)], [np.empty(0)]
    for i in range(len(off) - 1):  # O(N^2) but vectorised per tile: ~60 ms for 2500 tiles
        d = np.abs(off[i + 1 :] - off[i])
        ox, oy = tw - d[:, 0], th - d[:, 1]  # extent of the shared rectangle
        fx, fy = ox / tw, oy / th
        # Left/right neighbours share most rows and a thin strip of columns; top/bottom the
        # converse. Diagonal neighbours (small in both directions) are not edges.
        across.append(ox[(ox > 0) & (fy > 0.5) & (fx <= fy)])
        down.append(oy[(oy > 0) & (fx > 0.5) & (fy < fx)])
    across, down = np.concatenate(across), np.concatenate(down)
    return (float(np.median(across)) if across.size else 0.0, float(np.median(down)) if down.size else 0.0)


def _ramp(n: int, width: float) -> np.ndarray:
    """Raised-cosine weight along one tile axis: ~0 at the edges, 1 beyond `width` pixels.

    Pixel centres sit half a pixel from the edge, so the weight is small but never 0 inside a
    tile and the normalised weighted mean is defined wherever a tile is. Two ramps facing each
    other over the same width sum to 1: a seamless cross-fade across the overlap.
    """
    d = np.minimum(np.arange(n) + 0.5, n - 0.5 - np.arange(n))  # distance to the nearer edge
    t = np.clip(d / min(max(width, 1.0), n / 2), 0.0, 1.0)
    return (np.sin(0.5 * np.pi * t) ** 2).astype(np.float32)


def _load(read_tile: Callable[[int], np.ndarray], i: int, shape: tuple[int, int]) -> np.ndarray:
    tile = np.asarray(read_tile(i))
    if tile.shape != (*shape, 3) or tile.dtype != np.uint8:
        raise ValueError(
            f"tile {i}: read_tile returned {tile.dtype} {tile.shape}, expected uint8 {(*shape, 3)}"
        )
    return tile


def fuse_bands(
    read_tile: Callable[[int], np.ndarray],
    positions: ArrayLike,
    tile_shape: tuple[int, int],
    *,
    band_height: int = 512,
    blend: str = "feather",
    feather_width: float | None = None,
    fill: int = 0,
    workers: int = 2,
    progress: Callable[[int, int], object] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Fuse placed tiles into an RGB mosaic, yielded as horizontal bands from top to bottom.

    Parameters
    ----------
    read_tile : callable
        ``read_tile(i)`` returns tile `i` as a uint8 array of shape ``(*tile_shape, 3)``. It is
        called once per tile, from `workers` threads at a time (so it must be thread-safe),
        roughly in order of the tiles' top edges. Decoding with Pillow releases the GIL, so it
        overlaps with blending.
    positions : (N, 2) array_like
        Top-left corner of each tile as (x, y) = (column, row) in pixels, y down, in any frame.
        The minimum is shifted to 0 and positions are rounded to whole pixels.
    tile_shape : (int, int)
        (height, width) shared by all tiles.
    band_height : int, optional
        Rows per band (the last band may be shorter). Does not change the result.
    blend : {"feather", "none"}, optional
        ``"feather"``: weighted mean of the overlapping tiles, each weighted by a raised-cosine
        ramp from ~0 at its edges to 1 at `feather_width` pixels inside, which cross-fades
        brightness and colour differences over the overlap. ``"none"``: each pixel from the
        tile whose centre is nearest (hard seams, as openflexure-stitching produces).
    feather_width : float, optional
        Ramp width in pixels. Default: the median overlap of left/right neighbours for the
        ramps at left and right edges, and of top/bottom neighbours for the others.
    fill : int, optional
        Value of pixels no tile covers (default 0, black).
    workers : int, optional
        Threads decoding tiles ahead of the band being blended.
    progress : callable, optional
        Called as ``progress(rows_done, total_rows)`` after each band.

    Yields
    ------
    y0 : int
        First mosaic row of the band.
    band : ndarray
        uint8 array of shape ``(rows, W, 3)``; consecutive bands cover the mosaic of shape
        :func:`mosaic_shape` exactly once.

    Notes
    -----
    Overlap cells are blended on `workers` threads. Memory is independent of the mosaic's
    height: decoded tiles (at most as many as the band that needs the most at once, about two
    rows of tiles; the next row is decoded ahead within that allowance), one band, and float32
    scratch for 128 rows x tile width per thread. Tiles are released as soon as the bands pass
    their bottom edge.
    """
    off = _offsets(positions)
    th, tw = _check_tile_shape(tile_shape)
    if blend not in ("feather", "none"):
        raise ValueError(f"blend must be 'feather' or 'none', got {blend!r}")
    if int(band_height) < 1 or int(workers) < 1:
        raise ValueError("band_height and workers must be >= 1")
    if not 0 <= int(fill) <= 255:
        raise ValueError(f"fill must be in 0..255, got {fill}")
    if blend == "feather":
        if feather_width is None:
            across, down = _overlap_widths(off, (th, tw))
        else:
            across = down = float(feather_width)
        ramps = (_ramp(th, down), _ramp(tw, across))
    else:
        ramps = None
    return _bands(read_tile, off, (th, tw), int(band_height), ramps, int(fill), int(workers), progress)


def _most_tiles_per_band(tops: np.ndarray, th: int, height: int, band_height: int) -> int:
    """Largest number of tiles any one band needs at once (e.g. two rows where rows overlap)."""
    y0 = np.arange(0, height, band_height)
    y1 = np.minimum(y0 + band_height, height)
    tops = np.sort(tops)
    started = np.searchsorted(tops, y1, side="left")  # tiles with top < y1
    ended = np.searchsorted(tops + th, y0, side="right")  # tiles with bottom <= y0
    return int((started - ended).max())


def _bands(read_tile, off, tile_shape, band_height, ramps, fill, workers, progress):
    th, tw = tile_shape
    height, width = int(off[:, 1].max()) + th, int(off[:, 0].max()) + tw
    order = np.lexsort((off[:, 0], off[:, 1]))  # by top edge: the order bands need them
    tops = off[order, 1]
    # Read ahead as far as this many decoded tiles allow: the most a single band needs, so the
    # next row of tiles decodes while the bands cross the current one, yet no more than that
    # (~two rows) is ever held.
    budget = _most_tiles_per_band(tops, th, height, band_height)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ofm-tiling-decode")
    pending: dict[int, Future] = {}  # decoded or decoding, not yet passed by the bands
    submitted = 0

    def read_ahead(y1: int) -> None:
        nonlocal submitted
        while submitted < len(order) and (tops[submitted] < y1 or len(pending) < budget):
            i = int(order[submitted])
            pending[i] = pool.submit(_load, read_tile, i, tile_shape)
            submitted += 1

    # 128 rows x tile width x 32 bytes: 13 MB for 8 MP tiles; taller overlap cells go in pieces.
    # One scratch per blending thread: overlap cells are blended on all cores.
    scratches = None if ramps is None else [_Scratch(min(band_height, height, 128), tw) for _ in range(workers)]
    blend_pool = None if ramps is None or workers < 2 else ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="ofm-tiling-blend")
    try:
        for y0 in range(0, height, band_height):
            y1 = min(y0 + band_height, height)
            read_ahead(y1)
            # Released tiles ended above y0, so every pending tile starting above y1 is in the band.
            tiles = {i: f.result() for i, f in pending.items() if off[i, 1] < y1}
            if ramps is None:
                band = _nearest_band(tiles, off, tile_shape, y0, y1, width, fill)
            else:
                band = _feather_band(tiles, off, tile_shape, ramps, y0, y1, width, fill, scratches, blend_pool)
            del tiles
            for i in [i for i in pending if off[i, 1] + th <= y1]:
                del pending[i]  # the last reference: the decoded tile is freed here
            read_ahead(y1)  # keep decoding while the consumer handles this band
            if progress is not None:
                progress(y1, height)
            yield y0, band
    finally:
        for f in pending.values():
            f.cancel()
        pending.clear()
        pool.shutdown(wait=True, cancel_futures=True)
        if blend_pool is not None:
            blend_pool.shutdown(wait=True, cancel_futures=True)


def _cells(tiles, off, tile_shape, y0, y1, width):
    """Split the band y0:y1 along every tile edge into rectangles covered by a fixed set of tiles.

    Yields ``(rows, cols, cover)``: slices into the band and, for each covering tile, ``(tile,
    tile_rows, tile_cols)``. Most of a mosaic is covered by a single tile, which can then be
    copied as is; only the overlaps need arithmetic.
    """
    th, tw = tile_shape
    placed = [(tile, int(off[i, 0]), int(off[i, 1])) for i, tile in tiles.items()]
    xs = sorted({0, width, *(ox for _, ox, _ in placed), *(ox + tw for _, ox, _ in placed)})
    ys = sorted({y0, y1, *(min(max(oy, y0), y1) for _, _, oy in placed),
                 *(min(max(oy + th, y0), y1) for _, _, oy in placed)})
    for ya, yb in zip(ys[:-1], ys[1:]):
        in_rows = [t for t in placed if t[2] <= ya and t[2] + th >= yb]
        for xa, xb in zip(xs[:-1], xs[1:]):
            cover = [(tile, slice(ya - oy, yb - oy), slice(xa - ox, xb - ox))
                     for tile, ox, oy in in_rows if ox <= xa and ox + tw >= xb]
            if cover:
                yield slice(ya - y0, yb - y0), slice(xa, xb), cover


class _Scratch:
    """float32 work arrays for (pieces of) overlap cells, allocated once: reusing them avoids
    page-fault and allocator churn (fresh multi-MB arrays every cell fragment the heap)."""

    def __init__(self, rows: int, cols: int):
        self.rows = rows
        self.acc = np.empty((rows, cols, 3), np.float32)
        self.prod = np.empty((rows, cols, 3), np.float32)
        self.wsum = np.empty((rows, cols), np.float32)
        self.w = np.empty((rows, cols), np.float32)

    def views(self, rows: int, cols: int):
        return (a[:rows, :cols] for a in (self.acc, self.prod, self.wsum, self.w))


def _feather_band(tiles, off, tile_shape, ramps, y0, y1, width, fill, scratches, pool):
    band = np.full((y1 - y0, width, 3), fill, np.uint8)
    overlaps = []
    for rows, cols, cover in _cells(tiles, off, tile_shape, y0, y1, width):
        if len(cover) == 1:
            tile, ty, tx = cover[0]
            band[rows, cols] = tile[ty, tx]  # one tile: its weight cancels out
        else:
            overlaps.append((rows, cols, cover))
    if pool is None or len(overlaps) < 2:
        _blend_cells(band, overlaps, ramps, scratches[0])
        return band
    # Cells write to disjoint parts of the band: share them out by area, largest first.
    groups = [[] for _ in scratches]
    loads = [0] * len(scratches)
    for cell in sorted(overlaps, key=lambda c: -(c[0].stop - c[0].start) * (c[1].stop - c[1].start)):
        k = loads.index(min(loads))
        groups[k].append(cell)
        loads[k] += (cell[0].stop - cell[0].start) * (cell[1].stop - cell[1].start)
    for future in [pool.submit(_blend_cells, band, g, ramps, sc) for g, sc in zip(groups, scratches) if g]:
        future.result()
    return band


def _blend_cells(band, cells, ramps, scratch):
    """Weighted mean of the tiles covering each cell, written into `band` (numpy releases the GIL)."""
    wy, wx = ramps
    for rows, cols, cover in cells:
        for r0 in range(rows.start, rows.stop, scratch.rows):  # cells taller than the scratch
            r1 = min(r0 + scratch.rows, rows.stop)
            acc, prod, wsum, w = scratch.views(r1 - r0, cols.stop - cols.start)
            for k, (tile, ty, tx) in enumerate(cover):
                ty = slice(ty.start + r0 - rows.start, ty.start + r1 - rows.start)
                np.multiply(wy[ty, None], wx[None, tx], out=w)
                if k == 0:
                    np.multiply(tile[ty, tx], w[..., None], out=acc)
                    wsum[...] = w
                else:
                    acc += np.multiply(tile[ty, tx], w[..., None], out=prod)
                    wsum += w
            acc *= np.reciprocal(wsum, out=wsum)[..., None]  # weights are > 0 inside every tile
            # A weighted mean of uint8 values stays within 0..255 up to float rounding, so
            # adding 0.5 and truncating rounds to nearest without clipping.
            acc += 0.5
            band[r0:r1, cols] = acc


def _nearest_band(tiles, off, tile_shape, y0, y1, width, fill):
    th, tw = tile_shape
    band = np.full((y1 - y0, width, 3), fill, np.uint8)
    for rows, cols, cover in _cells(tiles, off, tile_shape, y0, y1, width):
        if len(cover) == 1:
            tile, ty, tx = cover[0]
            band[rows, cols] = tile[ty, tx]
            continue
        dst = band[rows, cols]
        best = np.full(dst.shape[:2], np.inf, np.float32)  # squared distance to a tile centre
        for tile, ty, tx in cover:
            # Distances from pixel centres to the tile centre, in tile coordinates.
            dy = (np.arange(ty.start, ty.stop) + 0.5 - th / 2) ** 2
            dx = (np.arange(tx.start, tx.stop) + 0.5 - tw / 2) ** 2
            d = (dy[:, None] + dx[None, :]).astype(np.float32)
            closer = d < best  # strict: ties keep the earlier tile (higher up, then further left)
            np.copyto(best, d, where=closer)  # copyto(where=) is much faster than boolean indexing
            np.copyto(dst, tile[ty, tx], where=closer[..., None])
    return band
