"""Streaming fusion of placed tiles into one mosaic of the tiles' own pixel type, band by band.

The mosaic is produced as horizontal bands, top to bottom, so that it never has to exist in
memory as a whole (a 50 x 50 scan of 8 MP tiles is ~16 Gpx per channel). Each tile is decoded
once, a little ahead of the first band that needs it, and dropped as soon as the bands have
passed its bottom edge: memory scales with about two rows of tiles, not with the mosaic.

Each band is cut along every tile edge into cells covered by a fixed set of tiles; cells with one
tile are copied, overlap cells blended, in vertical stripes on `workers` threads. 8-bit blending
rounds at each tile of a cell, so an overlap differs from the exact weighted mean by at most about
half a grey level per covering tile; 16-bit blending rounds once (`ofm_tiling.blend`).
The mosaic's size has one home, :func:`mosaic_shape`, which :func:`fuse_mosaic` hands on.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from .backend import Mosaic
from .blend import Piece, SeamCache, feather_cell, nearest_cell
from .memory import Trimmer
from .pixels import PixelForm, pixel_form
from .seams import SEAM_WIDTH, Ramp, tile_ramps

__all__ = ["mosaic_shape", "fuse_bands", "fuse_mosaic"]

ReadTile = Callable[[int], np.ndarray]
Progress = Callable[[int, int], object]


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


def _extent(off: np.ndarray, tile_shape: tuple[int, int]) -> tuple[int, int]:
    """(height, width) holding tiles at integer offsets `off` (minimum 0)."""
    return int(off[:, 1].max()) + tile_shape[0], int(off[:, 0].max()) + tile_shape[1]


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
        (height, width) after shifting the minimum position to 0 and rounding to whole pixels:
        exactly the rows and columns :func:`fuse_bands` produces.
    """
    return _extent(_offsets(positions), _check_tile_shape(tile_shape))


@dataclass(frozen=True)
class _Plan:
    """Everything the bands are made from, checked: integer tile offsets and the options."""

    off: np.ndarray                       # (N, 2) integer (x, y), minimum 0
    tile_shape: tuple[int, int]
    shape: tuple[int, int]                # of the mosaic: `mosaic_shape`
    band_height: int
    ramps: list[tuple[Ramp, Ramp]] | None  # each tile's (rows, columns) for "feather"; None: "none"
    form: PixelForm                       # of the tiles and the mosaic
    fill: int
    workers: int
    seams: SeamCache = field(default_factory=dict)  # feather runs and masks that repeat band after band


def _plan(positions: ArrayLike, tile_shape: tuple[int, int], *, band_height: int, blend: str,
          feather_width: float | None, fill: int, workers: int, pixel_type: str = "rgb8") -> _Plan:
    off = _offsets(positions)
    th, tw = _check_tile_shape(tile_shape)
    if blend not in ("feather", "none"):
        raise ValueError(f"blend must be 'feather' or 'none', got {blend!r}")
    if int(band_height) < 1 or int(workers) < 1:
        raise ValueError("band_height and workers must be >= 1")
    form = pixel_form(pixel_type)
    if not 0 <= int(fill) <= form.max:
        raise ValueError(f"fill must be in 0..{form.max}, got {fill}")
    ramps = None
    if blend == "feather":
        width = SEAM_WIDTH if feather_width is None else float(feather_width)
        if not width > 0:
            raise ValueError(f"feather_width must be positive, got {feather_width}")
        ramps = tile_ramps(off, (th, tw), width=width)
    return _Plan(off, (th, tw), _extent(off, (th, tw)), int(band_height), ramps, form, int(fill), int(workers))


def fuse_bands(
    read_tile: ReadTile,
    positions: ArrayLike,
    tile_shape: tuple[int, int],
    *,
    band_height: int = 512,
    blend: str = "feather",
    feather_width: float | None = None,
    fill: int = 0,
    workers: int = 2,
    progress: Progress | None = None,
    pixel_type: str = "rgb8",
) -> Iterator[tuple[int, np.ndarray]]:
    """Fuse placed tiles into a mosaic, yielded as horizontal bands from top to bottom.

    Parameters
    ----------
    read_tile : callable
        ``read_tile(i)`` returns tile `i` as an array of `pixel_type`: uint8 ``(*tile_shape, 3)``
        for rgb8, uint8 `tile_shape` for grey8, uint16 `tile_shape` for grey16. It is
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
        ``"feather"``: neighbouring tiles cross-fade (raised cosine) over a zone of
        `feather_width` pixels in the middle of their overlap, which hides brightness and colour
        differences; elsewhere each pixel is its one tile's (see `ofm_tiling.seams`).
        ``"none"``: each pixel from the tile whose centre is nearest (hard seams, as
        openflexure-stitching produces).
    feather_width : float, optional
        Width of the cross-fade in pixels, capped by each overlap (default
        `ofm_tiling.seams.SEAM_WIDTH`; ``numpy.inf`` cross-fades over whole overlaps).
    fill : int, optional
        Value of pixels no tile covers (default 0, black).
    workers : int, optional
        Threads decoding tiles ahead of the band being assembled, and threads assembling it.
    progress : callable, optional
        Called as ``progress(rows_done, total_rows)`` after each band.
    pixel_type : {"rgb8", "grey8", "grey16"}, optional
        What the tiles hold (`ofm_tiling.pixels.PIXEL_TYPES`); the mosaic holds the same.

    Yields
    ------
    y0 : int
        First mosaic row of the band.
    band : ndarray
        ``(rows, W, 3)`` uint8, ``(rows, W)`` uint8 or ``(rows, W)`` uint16 by `pixel_type`;
        consecutive bands cover the mosaic of shape
        :func:`mosaic_shape` exactly once.

    Notes
    -----
    Memory is independent of the mosaic's height: decoded tiles (at most as many as the band
    that needs the most at once, about two rows of tiles), one band, and the cell being blended
    on each thread. Options are checked here, before the first band is asked for.
    """
    plan = _plan(positions, tile_shape, band_height=band_height, blend=blend,
                 feather_width=feather_width, fill=fill, workers=workers, pixel_type=pixel_type)
    return _bands(read_tile, plan, progress)


def fuse_mosaic(
    tiles: Sequence[str | os.PathLike] | ReadTile,
    positions: ArrayLike,
    tile_shape: tuple[int, int],
    *,
    workers: int = 2,
    progress: Progress | None = None,
    pixel_type: str = "rgb8",
    **options,
) -> Mosaic:
    """The fused mosaic of placed tiles as a `Mosaic`: its shape and its bands.

    Parameters
    ----------
    tiles : sequence of path-like, or callable
        Image files in the order of `positions` (decoded with :func:`ofm_tiling.imageio.read_rgb`
        for rgb8, :func:`ofm_tiling.imageio.read_tile` otherwise), or a ``read_tile(i)`` function
        as for :func:`fuse_bands`.
    positions : (N, 2) array_like
        Top-left corners ``(x, y)`` in pixels, e.g. ``Placement.positions``, in any frame.
    tile_shape : (int, int)
        (height, width) shared by all tiles.
    workers, progress, pixel_type, **options
        As for :func:`fuse_bands` (`band_height`, `blend`, `feather_width`, `fill`).

    Returns
    -------
    Mosaic
        ``shape`` is :func:`mosaic_shape` and the bands cover exactly that: pass both to the
        writer and report that same shape (then the size printed is the size written).
    """
    plan = _plan(positions, tile_shape, band_height=options.pop("band_height", 512),
                 blend=options.pop("blend", "feather"), feather_width=options.pop("feather_width", None),
                 fill=options.pop("fill", 0), workers=workers, pixel_type=pixel_type)
    read_tile = tiles if callable(tiles) else _path_reader(tiles, len(plan.off), pixel_type)
    if options:
        raise TypeError(f"unexpected options: {', '.join(sorted(options))}")
    return Mosaic(plan.shape, _bands(read_tile, plan, progress), pixel_type)


def _path_reader(tiles: Sequence[str | os.PathLike], n: int, pixel_type: str) -> ReadTile:
    from .imageio import read_rgb, read_tile

    paths = [os.fspath(p) for p in tiles]
    if len(paths) != n:
        raise ValueError(f"{len(paths)} tiles but {n} positions")
    if pixel_type == "rgb8":
        return lambda i: read_rgb(paths[i])  # the fastest decode of the common case
    return lambda i: read_tile(paths[i], pixel_type)


def _load(read_tile: ReadTile, i: int, plan: _Plan) -> np.ndarray:
    tile = np.asarray(read_tile(i))
    want = (*plan.tile_shape, *plan.form.sample)
    if tile.shape != want or tile.dtype != plan.form.dtype:
        raise ValueError(f"tile {i}: read_tile returned {tile.dtype} {tile.shape}, expected {plan.form.dtype} {want}")
    return tile


def _most_tiles_per_band(tops: np.ndarray, th: int, height: int, band_height: int) -> int:
    """Largest number of tiles any one band needs at once (e.g. two rows where rows overlap)."""
    y0 = np.arange(0, height, band_height)
    y1 = np.minimum(y0 + band_height, height)
    tops = np.sort(tops)
    started = np.searchsorted(tops, y1, side="left")  # tiles with top < y1
    ended = np.searchsorted(tops + th, y0, side="right")  # tiles with bottom <= y0
    return int((started - ended).max())


class _Decoder:
    """Decodes tiles on worker threads in the order the bands need them (by top edge), reading
    ahead as far as the most tiles a single band needs: the next row of tiles decodes while the
    bands cross the current one, yet no more than that (~two rows) is ever held."""

    def __init__(self, read_tile: ReadTile, plan: _Plan):
        self.read_tile, self.plan = read_tile, plan
        self.order = np.lexsort((plan.off[:, 0], plan.off[:, 1]))
        self.tops = plan.off[self.order, 1]
        self.budget = _most_tiles_per_band(self.tops, plan.tile_shape[0], plan.shape[0], plan.band_height)
        self.pool = ThreadPoolExecutor(max_workers=plan.workers, thread_name_prefix="ofm-tiling-decode")
        self.pending: dict[int, Future] = {}  # decoded or decoding, not yet passed by the bands
        self.submitted = 0

    def read_ahead(self, y1: int) -> None:
        """Start decoding every tile that begins above row `y1`, and more within the budget."""
        while self.submitted < len(self.order) and (
                self.tops[self.submitted] < y1 or len(self.pending) < self.budget):
            i = int(self.order[self.submitted])
            self.pending[i] = self.pool.submit(_load, self.read_tile, i, self.plan)
            self.submitted += 1

    def tiles_above(self, y1: int) -> dict[int, np.ndarray]:
        """The decoded tiles of the band ending at `y1` (released tiles ended above it)."""
        return {i: f.result() for i, f in self.pending.items() if self.plan.off[i, 1] < y1}

    def release_above(self, y1: int) -> bool:
        """Drop the tiles that end above row `y1`; True if any was dropped."""
        passed = [i for i in self.pending if self.plan.off[i, 1] + self.plan.tile_shape[0] <= y1]
        for i in passed:
            del self.pending[i]  # the last reference: the decoded tile is freed here
        return bool(passed)

    def close(self) -> None:
        for f in self.pending.values():
            f.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)


def _bands(read_tile: ReadTile, plan: _Plan, progress: Progress | None) -> Iterator[tuple[int, np.ndarray]]:
    height = plan.shape[0]
    decoder = _Decoder(read_tile, plan)
    # Bands are assembled in vertical stripes on all cores: copies, blending and filling alike.
    stripe_pool = None if plan.workers < 2 else ThreadPoolExecutor(
        max_workers=plan.workers, thread_name_prefix="ofm-tiling-fuse")
    # Freed tiles stay resident for the next ones to reuse, up to about a row of tiles more.
    trimmer = Trimmer(margin=max(1, decoder.budget // 2) * plan.form.nbytes(plan.tile_shape))
    try:
        for y0 in range(0, height, plan.band_height):
            y1 = min(y0 + plan.band_height, height)
            decoder.read_ahead(y1)
            band = _assemble(plan, decoder.tiles_above(y1), y0, y1, stripe_pool)
            if decoder.release_above(y1):
                trimmer.freed()  # so resident memory stays flat over a long scan
            decoder.read_ahead(y1)  # keep decoding while the consumer handles this band
            if progress is not None:
                progress(y1, height)
            yield y0, band
    finally:
        decoder.close()
        if stripe_pool is not None:
            stripe_pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Band:
    """Rows ``y0:y1`` of the mosaic being assembled, and the decoded tiles that reach into them."""

    pixels: np.ndarray
    tiles: dict[int, np.ndarray]
    y0: int
    y1: int


def _assemble(plan: _Plan, tiles: dict[int, np.ndarray], y0: int, y1: int,
              pool: ThreadPoolExecutor | None) -> np.ndarray:
    width = plan.shape[1]
    band = _Band(np.empty((y1 - y0, width, *plan.form.sample), plan.form.dtype), tiles, y0, y1)
    stripes = _stripes(tiles, plan.off, plan.tile_shape[1], width, 1 if pool is None else 2 * plan.workers)
    if pool is None:
        for xa, xb in stripes:
            _fill_stripe(plan, band, xa, xb)
    else:
        for future in [pool.submit(_fill_stripe, plan, band, xa, xb) for xa, xb in stripes]:
            future.result()
    return band.pixels


def _stripes(tiles, off: np.ndarray, tw: int, width: int, n: int) -> list[tuple[int, int]]:
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


def _fill_stripe(plan: _Plan, band: _Band, xa: int, xb: int) -> None:
    """Write columns ``xa:xb`` of the band: each cell from its tiles, `fill` where none covers."""
    out = band.pixels
    for cell in _cells(band, plan, xa, xb):
        if not cell.cover:
            out[cell.rows, cell.cols] = plan.fill
        elif len(cell.cover) == 1:
            piece = cell.cover[0]
            out[cell.rows, cell.cols] = piece.tile[piece.rows, piece.cols]  # one tile: its weight cancels out
        elif plan.ramps is None:
            nearest_cell(out[cell.rows, cell.cols], cell.cover, plan.tile_shape)
        else:
            feather_cell(out[cell.rows, cell.cols], cell.cover, plan.seams)


class _Cell(NamedTuple):
    """A rectangle of the band covered by a fixed set of tiles, in the order of the band's tiles."""

    rows: slice
    cols: slice
    cover: list[Piece]


def _cells(band: _Band, plan: _Plan, xa: int, xb: int) -> Iterator[_Cell]:
    """Split columns ``xa:xb`` of the band along every tile edge into cells, which tile it.

    Most of a mosaic is covered by a single tile, which can then be copied as is; only the
    overlaps need arithmetic. Cells no tile covers come with an empty `cover`.
    """
    (th, tw), off = plan.tile_shape, plan.off
    y0, y1 = band.y0, band.y1
    placed = [(i, tile, int(off[i, 0]), int(off[i, 1])) for i, tile in band.tiles.items()
              if off[i, 0] < xb and off[i, 0] + tw > xa]
    xs = sorted({xa, xb, *(e for _, _, ox, _ in placed for e in (ox, ox + tw) if xa < e < xb)})
    ys = sorted({y0, y1, *(e for _, _, _, oy in placed for e in (oy, oy + th) if y0 < e < y1)})
    for ya, yb in zip(ys[:-1], ys[1:]):
        in_rows = [t for t in placed if t[3] <= ya and t[3] + th >= yb]
        for xc, xd in zip(xs[:-1], xs[1:]):
            cover = [Piece(tile, slice(ya - oy, yb - oy), slice(xc - ox, xd - ox),
                           None if plan.ramps is None else plan.ramps[i])
                     for i, tile, ox, oy in in_rows if ox <= xc and ox + tw >= xd]
            yield _Cell(slice(ya - y0, yb - y0), slice(xc, xd), cover)
