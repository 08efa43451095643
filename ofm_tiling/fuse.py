"""Streaming fusion of placed tiles into one RGB mosaic, band by band.

The mosaic is produced as horizontal bands, top to bottom, so that it never has to exist in
memory as a whole (a 50 x 50 scan of 8 MP tiles is ~16 Gpx per channel). Each tile is decoded
once, a little ahead of the first band that needs it, and dropped as soon as the bands have
passed its bottom edge: memory scales with about two rows of tiles, not with the mosaic.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from PIL import Image

from .memory import release_free_memory

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
        roughly in order of the tiles' top edges. JPEG decoders release the GIL, so decoding
        overlaps with blending (:func:`ofm_tiling.imageio.read_rgb` is the fastest here).
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
        Threads decoding tiles ahead of the band being assembled, and threads assembling it.
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
    Each band is cut along every tile edge into cells covered by a fixed set of tiles; cells
    with one tile are copied, overlap cells blended, in vertical stripes on `workers` threads.
    Blending rounds to 8 bits at each tile of a cell, so an overlap differs from the exact
    weighted mean by at most about half a grey level per covering tile.

    Memory is independent of the mosaic's height: decoded tiles (at most as many as the band
    that needs the most at once, about two rows of tiles; the next row is decoded ahead within
    that allowance), one band, and the cell being blended on each thread. Tiles are released as
    soon as the bands pass their bottom edge.
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
        ramps = (_feather_ramp(th, down), _feather_ramp(tw, across))
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

    # Bands are assembled in vertical stripes on all cores: copies, blending and filling alike.
    stripe_pool = None if workers < 2 else ThreadPoolExecutor(
        max_workers=workers, thread_name_prefix="ofm-tiling-fuse")
    try:
        for y0 in range(0, height, band_height):
            y1 = min(y0 + band_height, height)
            read_ahead(y1)
            # Released tiles ended above y0, so every pending tile starting above y1 is in the band.
            tiles = {i: f.result() for i, f in pending.items() if off[i, 1] < y1}
            band = np.empty((y1 - y0, width, 3), np.uint8)
            jobs = [(band, tiles, off, tile_shape, ramps, y0, y1, xa, xb, fill)
                    for xa, xb in _stripes(tiles, off, tw, width, 1 if stripe_pool is None else 2 * workers)]
            if stripe_pool is None:
                for job in jobs:
                    _fill_stripe(*job)
            else:
                for future in [stripe_pool.submit(_fill_stripe, *job) for job in jobs]:
                    future.result()
            del tiles, jobs
            passed = [i for i in pending if off[i, 1] + th <= y1]
            for i in passed:
                del pending[i]  # the last reference: the decoded tile is freed here
            if passed:
                release_free_memory()  # so resident memory stays flat over a long scan
            read_ahead(y1)  # keep decoding while the consumer handles this band
            if progress is not None:
                progress(y1, height)
            yield y0, band
    finally:
        for f in pending.values():
            f.cancel()
        pending.clear()
        pool.shutdown(wait=True, cancel_futures=True)
        if stripe_pool is not None:
            stripe_pool.shutdown(wait=True, cancel_futures=True)


def _stripes(tiles, off, tw: int, width: int, n: int) -> list[tuple[int, int]]:
    """About `n` column ranges of similar width that cover ``0 .. width``, cut at tile edges so
    that no overlap cell is split (a cut elsewhere would only add cells)."""
    edges = np.unique([e for i in tiles for e in (int(off[i, 0]), int(off[i, 0]) + tw) if 0 < e < width])
    cuts = [0]
    for k in range(1, n):
        if len(edges) == 0:
            break
        e = int(edges[np.argmin(np.abs(edges - k * width / n))])
        if e > cuts[-1]:
            cuts.append(e)
    cuts.append(width)
    return list(zip(cuts[:-1], cuts[1:]))


def _fill_stripe(band, tiles, off, tile_shape, ramps, y0, y1, xa, xb, fill):
    """Write columns ``xa:xb`` of the band ``y0:y1``: fill, then each cell from its tiles."""
    band[:, xa:xb] = fill
    for rows, cols, cover in _cells(tiles, off, tile_shape, y0, y1, xa, xb):
        if len(cover) == 1:
            tile, ty, tx = cover[0]
            band[rows, cols] = tile[ty, tx]  # one tile: its weight cancels out
        elif ramps is None:
            _nearest_cell(band[rows, cols], cover, tile_shape)
        else:
            band[rows, cols] = _blend_cell(cover, ramps)


def _cells(tiles, off, tile_shape, y0, y1, xa, xb):
    """Split the band ``y0:y1``, columns ``xa:xb``, along every tile edge into rectangles covered
    by a fixed set of tiles.

    Yields ``(rows, cols, cover)``: slices into the band and, for each covering tile in the order
    of `tiles`, ``(tile, tile_rows, tile_cols)``. Most of a mosaic is covered by a single tile,
    which can then be copied as is; only the overlaps need arithmetic.
    """
    th, tw = tile_shape
    placed = [(tile, int(off[i, 0]), int(off[i, 1])) for i, tile in tiles.items()
              if off[i, 0] < xb and off[i, 0] + tw > xa]
    xs = sorted({xa, xb, *(e for _, ox, _ in placed for e in (ox, ox + tw) if xa < e < xb)})
    ys = sorted({y0, y1, *(e for _, _, oy in placed for e in (oy, oy + th) if y0 < e < y1)})
    for ya, yb in zip(ys[:-1], ys[1:]):
        in_rows = [t for t in placed if t[2] <= ya and t[2] + th >= yb]
        for xc, xd in zip(xs[:-1], xs[1:]):
            cover = [(tile, slice(ya - oy, yb - oy), slice(xc - ox, xd - ox))
                     for tile, ox, oy in in_rows if ox <= xc and ox + tw >= xd]
            if cover:
                yield slice(ya - y0, yb - y0), slice(xc, xd), cover


class _Ramp(NamedTuple):
    """Feather weights along one tile axis, and the range ``lo:hi`` where they are exactly 1."""

    w: np.ndarray
    lo: int
    hi: int


def _feather_ramp(n: int, width: float) -> _Ramp:
    w = _ramp(n, width)
    ones = np.flatnonzero(w == 1)
    return _Ramp(w, int(ones[0]), int(ones[-1]) + 1) if len(ones) else _Ramp(w, 0, 0)


def _runs(spans: list[slice], ramp: _Ramp) -> list[tuple[int, int, bool]]:
    """Split a cell's extent along one axis around the run where every covering tile's weight is
    exactly 1 (contiguous: each tile is 1 on its interior). Returns ``(start, stop, flat)``, with
    `flat` when no weight varies along this axis in the run (then the masks are 1-D)."""
    n = spans[0].stop - spans[0].start
    a, b = 0, n
    for s in spans:
        a, b = max(a, ramp.lo - s.start), min(b, ramp.hi - s.start)
    if a >= b:
        return [(0, n, n == 1)]
    return [(s, e, (s, e) == (a, b) or e - s == 1) for s, e in ((0, a), (a, b), (b, n)) if e > s]


def _inclusion_masks(ys: list[np.ndarray], xs: list[np.ndarray]) -> list[np.ndarray]:
    """Masks that blend tiles ``K-2 .. 0`` one by one over tile ``K-1`` into the weighted mean.

    Tile `k` has weight ``ys[k][:, None] * xs[k][None, :]``. Pasting tile `k` with opacity
    ``w_k / (w_k + ... + w_{K-1})`` over the blend of the tiles after it leaves the weighted mean
    of tiles ``k .. K-1``, so after tile 0 it is the mean of all. Masks are uint8 (255 = opaque),
    shaped like the broadcast weights: pass length-1 `ys` (or `xs`) where no weight varies.
    """
    w = [y[:, None] * x[None, :] for y, x in zip(ys, xs)]  # float32 throughout: the same values
    total = w[-1]                                           # whichever way a cell is split
    masks = [None] * (len(w) - 1)
    for k in range(len(w) - 2, -1, -1):
        total = total + w[k]
        a = w[k] / total
        a *= 255
        a += 0.5
        masks[k] = a.astype(np.uint8)
    return masks


def _blend_cell(cover, ramps) -> np.ndarray:
    """Feathered weighted mean of the tiles covering one cell, as a uint8 array.

    The cell is assembled in Pillow: the last covering tile, then the others pasted over it with
    8-bit opacity masks (:func:`_inclusion_masks`). Pillow blends in one integer pass in C and
    releases the GIL, several times faster than float arithmetic in numpy. Weights are products of
    1-D ramps, and in most of an overlap all but one of them is 1 (a side overlap away from the
    corners), so masks are mostly 1-D and cost next to nothing.
    """
    wy, wx = ramps
    base, ty, tx = cover[-1]
    cell = Image.fromarray(base[ty, tx])
    for r0, r1, yflat in _runs([ty for _, ty, _ in cover], wy):
        ys = [wy.w[ty.start + r0 : ty.start + (r0 + 1 if yflat else r1)] for _, ty, _ in cover]
        for c0, c1, xflat in _runs([tx for _, _, tx in cover], wx):
            xs = [wx.w[tx.start + c0 : tx.start + (c0 + 1 if xflat else c1)] for _, _, tx in cover]
            masks = _inclusion_masks(ys, xs)
            shape = (r1 - r0, c1 - c0)
            for (tile, ty, tx), mask in reversed(list(zip(cover[:-1], masks))):  # K-2 .. 0
                src = tile[ty.start + r0 : ty.start + r1, tx.start + c0 : tx.start + c1]
                mask = np.ascontiguousarray(np.broadcast_to(mask, shape))
                cell.paste(Image.fromarray(src), (c0, r0), Image.fromarray(mask))
    return np.asarray(cell)


def _nearest_cell(dst: np.ndarray, cover, tile_shape) -> None:
    """Fill one cell with, at each pixel, the covering tile whose centre is nearest."""
    th, tw = tile_shape
    best = np.full(dst.shape[:2], np.inf, np.float32)  # squared distance to a tile centre
    for tile, ty, tx in cover:
        # Distances from pixel centres to the tile centre, in tile coordinates.
        dy = (np.arange(ty.start, ty.stop) + 0.5 - th / 2) ** 2
        dx = (np.arange(tx.start, tx.stop) + 0.5 - tw / 2) ** 2
        d = (dy[:, None] + dx[None, :]).astype(np.float32)
        closer = d < best  # strict: ties keep the earlier tile (higher up, then further left)
        np.copyto(best, d, where=closer)  # copyto(where=) is much faster than boolean indexing
        np.copyto(dst, tile[ty, tx], where=closer[..., None])
