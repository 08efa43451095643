"""Blending the tiles that cover one cell of the mosaic: feathered weighted mean or nearest centre.

A cell is a rectangle covered by a fixed set of tiles (`ofm_tiling.fuse` cuts the mosaic into
them); these functions compute its pixels from the pieces of the tiles that cover it. 8-bit tiles
(RGB or grey) are blended with 8-bit opacity masks in the integer arithmetic of Pillow's masked
paste (which earlier versions used, so mosaics stay byte for byte the same); 16-bit grey tiles
with float32 weights, rounded once, as 8-bit masks would lose their precision.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .seams import Ramp

__all__ = ["Piece", "feather_cell", "nearest_cell"]


class Piece(NamedTuple):
    """The part of one tile that covers a cell, with the tile's (rows, columns) feather ramps."""

    tile: np.ndarray
    rows: slice
    cols: slice
    ramps: tuple[Ramp, Ramp] | None = None


_ZERO, _ONE, _RAMP = 0, 1, 2  # what a tile's weight does over a run of a cell


class _Run(NamedTuple):
    """A stretch ``start:stop`` of a cell along one axis, and each piece's weight regime over it."""

    start: int
    stop: int
    regimes: tuple[int, ...]


def _regime(ramp: Ramp, t: int) -> int:
    if t < ramp.zlo or t >= ramp.zhi:
        return _ZERO
    return _ONE if ramp.lo <= t < ramp.hi else _RAMP


def _runs(spans: list[slice], ramps: list[Ramp]) -> list[_Run]:
    """Split a cell's extent along one axis wherever a covering tile's weight changes between
    0, 1 and in-between (contiguous zones of each ramp), so each run has one regime per tile."""
    n = spans[0].stop - spans[0].start
    cuts = {0, n}
    for s, r in zip(spans, ramps):
        cuts.update(b - s.start for b in (r.zlo, r.lo, r.hi, r.zhi) if 0 < b - s.start < n)
    edges = sorted(cuts)
    runs: list[_Run] = []
    for a, b in zip(edges[:-1], edges[1:]):
        regimes = tuple(_regime(r, s.start + a) for s, r in zip(spans, ramps))
        last = runs[-1] if runs else None
        if last is not None and [g == _ZERO for g in last.regimes] == [g == _ZERO for g in regimes]:
            # The same tiles have weight: one run (fewer, larger blends), varying where any part varies.
            runs[-1] = _Run(last.start, b, tuple(g if g == h else _RAMP for g, h in zip(last.regimes, regimes)))
        else:
            runs.append(_Run(a, b, regimes))
    return runs


def _inclusion_masks(ys: list[np.ndarray], xs: list[np.ndarray]) -> list[np.ndarray]:
    """Masks that blend tiles ``K-2 .. 0`` one by one over tile ``K-1`` into the weighted mean.

    Tile `k` has weight ``ys[k][:, None] * xs[k][None, :]``. Pasting tile `k` with opacity
    ``w_k / (w_k + ... + w_{K-1})`` over the blend of the tiles after it leaves the weighted mean
    of tiles ``k .. K-1``, so after tile 0 it is the mean of all. Masks are uint8 (255 = opaque),
    shaped like the broadcast weights: pass length-1 `ys` (or `xs`) where no weight varies.
    """
    w = [y[:, None] * x[None, :] for y, x in zip(ys, xs)]  # float32 throughout: the same values
    total = w[-1]                                           # whichever way a cell is split
    masks: list[np.ndarray] = [np.empty(0, np.uint8)] * (len(w) - 1)
    for k in range(len(w) - 2, -1, -1):
        total = total + w[k]
        a = w[k] / total
        a *= 255
        a += 0.5
        masks[k] = a.astype(np.uint8)
    return masks


SeamCache = dict  # what column runs or x-only masks depend on -> them (the same in every band)


def feather_cell(dst: np.ndarray, cover: list[Piece], cache: SeamCache | None = None) -> None:
    """Write into `dst` the feathered weighted mean of the tiles covering one cell.

    The cell is split where any tile's weight changes regime (`_runs`). A part where one tile
    alone has weight is that tile's pixels, copied; only the cross-fade zones are blended: the
    last tile with weight, then the others pasted over it with 8-bit opacity masks
    (:func:`_inclusion_masks`, :func:`_paste`), in uint16 integers, several times faster than
    float arithmetic; weights are products of 1-D ramps and mostly vary along one axis only, so
    masks are mostly 1-D and cost next to nothing. Where no tile has weight (only in unusual
    layouts, e.g. a tile overlapped on all sides by more than half its size), the tiles are
    averaged with equal weights.

    `cache`, a dict kept for the whole mosaic, holds what depends on columns only: a vertical
    seam's column runs and masks are the same in every band, so they are computed once.
    """
    cache = {} if cache is None else cache
    key = ("runs", *((id(p.ramps[1]), p.cols.start, p.cols.stop) for p in cover))  # type: ignore[index]
    col_runs = cache.get(key)
    if col_runs is None:
        col_runs = cache[key] = _runs([p.cols for p in cover], [p.ramps[1] for p in cover])  # type: ignore[index]
    for ry in _runs([p.rows for p in cover], [p.ramps[0] for p in cover]):  # type: ignore[index]
        for rx in col_runs:
            weighted = [k for k, (a, b) in enumerate(zip(ry.regimes, rx.regimes)) if a != _ZERO and b != _ZERO]
            rows, cols = slice(ry.start, ry.stop), slice(rx.start, rx.stop)
            if len(weighted) == 1:
                p = cover[weighted[0]]
                dst[rows, cols] = p.tile[_within(p.rows, rows), _within(p.cols, cols)]
            else:
                dst[rows, cols] = _blend(cover, weighted, ry, rx, cache)


def _within(span: slice, part: slice) -> slice:
    return slice(span.start + part.start, span.start + part.stop)


def _blend(cover: list[Piece], weighted: list[int], ry: _Run, rx: _Run, cache: SeamCache) -> np.ndarray:
    """Weighted mean of the pieces `weighted` (all of them, equally, when empty) over one run pair."""
    equal = not weighted
    chosen = range(len(cover)) if equal else weighted
    ys, xs, parts = [], [], []
    for k in chosen:
        p = cover[k]
        rows, cols = _within(p.rows, slice(ry.start, ry.stop)), _within(p.cols, slice(rx.start, rx.stop))
        wy, wx = p.ramps  # type: ignore[misc]
        # A weight that is 1 all along the run is passed as None, so masks stay 1-D.
        ys.append((wy, rows) if not equal and ry.regimes[k] == _RAMP else None)
        xs.append((wx, cols) if not equal and rx.regimes[k] == _RAMP else None)
        parts.append(p.tile[rows, cols])
    if parts[0].dtype != np.uint8:
        return _blend_wide(parts, [_weights(y) for y in ys], [_weights(x) for x in xs])
    return _paste(parts, _masks(ys, xs, parts[0].shape, cache))


def _weights(span: tuple[Ramp, slice] | None) -> np.ndarray:
    """The weights of a ramp over a span; None: weight 1 all along (one value, broadcast)."""
    return np.ones(1, np.float32) if span is None else span[0].w[span[1]]


def _masks(ys: list, xs: list, shape: tuple[int, ...], cache: SeamCache) -> list[np.ndarray]:
    """:func:`_inclusion_masks` as (1 or rows, 1 or columns x channels) arrays, ready to broadcast
    over the flattened (rows, columns x channels) pixels :func:`_paste` blends."""
    key = None
    if all(y is None for y in ys):  # the same in every band: look it up
        key = tuple(None if x is None else (id(x[0]), x[1].start, x[1].stop) for x in xs)
        if key in cache:
            return cache[key]
    masks = _inclusion_masks([_weights(y) for y in ys], [_weights(x) for x in xs])
    channels = shape[2] if len(shape) == 3 else 1
    masks = [(np.repeat(m, channels, axis=1) if m.shape[1] > 1 else m).astype(np.uint16) for m in masks]
    if key is not None:
        cache[key] = masks
    return masks


def _paste(parts: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """Paste ``parts[K-2] .. parts[0]`` over ``parts[K-1]`` through `masks` (uint16, 255 = opaque).

    The integer arithmetic of Pillow's masked paste, ``(under * (255 - m) + over * m) / 255``
    rounded as Pillow does, so 8-bit mosaics stay byte for byte what Pillow made of them. In
    place in uint16 (at most 65407), with pixels flattened to rows of columns x channels values.
    Faster than Pillow itself here: converting each cell's parts to and from images cost more
    than Pillow's single pass in C saves (about half the time on 8 MP tiles, measured).
    """
    shape = parts[0].shape
    flat = (shape[0], -1)
    cell = parts[-1].reshape(flat).astype(np.uint16)
    for src, mask in zip(parts[-2::-1], masks[::-1]):  # K-2 .. 0
        cell *= 255 - mask
        cell += src.reshape(flat) * mask
        cell += 128  # Pillow's DIV255: (t + 128 + ((t + 128) >> 8)) >> 8
        cell += cell >> 8
        cell >>= 8
    return cell.astype(np.uint8).reshape(shape)


def _blend_wide(parts: list[np.ndarray], ys: list[np.ndarray], xs: list[np.ndarray]) -> np.ndarray:
    """:func:`_blend` for 16-bit tiles: the weighted mean in float32, rounded half up once.

    float32 holds a 16-bit value times a weight in (0, 1] to ~0.004 grey levels, so the rounded
    mean is within half a level of the exact one.
    """
    acc = np.zeros(parts[0].shape[:2], np.float32)
    total = np.zeros_like(acc)
    for part, y, x in zip(parts, ys, xs):
        w = y[:, None] * x[None, :]
        acc += w * part
        total += w
    acc /= total
    acc += 0.5
    return np.minimum(acc, np.iinfo(parts[0].dtype).max).astype(parts[0].dtype)


def nearest_cell(dst: np.ndarray, cover: list[Piece], tile_shape: tuple[int, int]) -> None:
    """Fill one cell with, at each pixel, the covering tile whose centre is nearest."""
    th, tw = tile_shape
    best = np.full(dst.shape[:2], np.inf, np.float32)  # squared distance to a tile centre
    for tile, ty, tx, _ in cover:
        # Distances from pixel centres to the tile centre, in tile coordinates.
        dy = (np.arange(ty.start, ty.stop) + 0.5 - th / 2) ** 2
        dx = (np.arange(tx.start, tx.stop) + 0.5 - tw / 2) ** 2
        d = (dy[:, None] + dx[None, :]).astype(np.float32)
        closer = d < best  # strict: ties keep the earlier tile (higher up, then further left)
        np.copyto(best, d, where=closer)  # copyto(where=) is much faster than boolean indexing
        np.copyto(dst, tile[ty, tx], where=closer[..., None] if dst.ndim == 3 else closer)
