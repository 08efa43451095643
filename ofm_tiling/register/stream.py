"""Decode each tile once and measure every pair as soon as both its tiles are decoded.

Each tile is decoded at full resolution; the coarse level is reduced from it and the strips its
pairs need are cut out. A pair is measured (and refined, which needs both full tiles) as soon as
its two tiles are in; a tile is dropped once its last pair has run, so memory holds about one row
of tiles, whatever the scan's length. Decoding is throttled so it cannot race ahead of the
measurements.
"""
from __future__ import annotations

from collections import Counter, defaultdict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import OfmTilingError
from .measure import MatchSettings, PairMeasurement, coarse_level, flipped, measure_pair, null_match
from .nominal import nominal_match
from .pairs import ScanPlan
from .tiles import TileImages

__all__ = ["Progress", "ScanMeasurements", "measure_scan", "stream"]


class Progress:
    """Adapter for ``progress(n_done, n_total)`` callables and tqdm-like objects (``update(n)``)."""

    def __init__(self, progress: Any, total: int):
        self.progress, self.total, self.done = progress, total, 0
        if progress is not None and hasattr(progress, "update") and getattr(progress, "total", 0) is None:
            progress.total = total
            if hasattr(progress, "refresh"):
                progress.refresh()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.progress is None or n == 0:
            return
        if hasattr(self.progress, "update"):
            self.progress.update(n)
        else:
            self.progress(self.done, self.total)


@dataclass(frozen=True)
class _Strip:
    """The coarse strip of `pair` in its first (`side` 0) or second (`side` 1) tile."""

    pair: int
    side: int


@dataclass(frozen=True)
class _Full:
    """A full-resolution tile (kept for refinement)."""

    tile: int


@dataclass
class ScanMeasurements:
    """Every pair's measurement, and the (correlation, pixels compared) of every null comparison."""

    pairs: list[PairMeasurement]
    null: list[tuple[float, int]]


def measure_scan(tiles: TileImages, plan: ScanPlan, settings: MatchSettings, *, workers: int,
                 progress: Any = None, known: dict[int, Any] | None = None) -> ScanMeasurements:
    """Decode every tile once and run every pair measurement and null comparison of `plan`.

    `known` maps work units (pairs ``0..P-1``, then null comparisons ``P..``) to results already
    measured (`ofm_tiling.paircache`): they are not measured again, and a tile none of whose
    remaining units needs it is not decoded.
    """
    known = known or {}
    refine = plan.scale > 1 or settings.nominal
    n_pairs = len(plan.pairs)
    # Work units, by the arrays they need: pairs (with both full tiles when refining), then nulls
    # (with full tiles too when nominal positions are matched at full resolution).
    units: list[tuple[Hashable, ...]] = [
        (_Strip(p, 0), _Strip(p, 1)) + ((_Full(i), _Full(j)) if refine else ())
        for p, (i, j) in enumerate(plan.pairs)]
    units += [(_Strip(nc.pair, 0), _Strip(nc.partner, 1))
              + ((_Full(plan.pairs[nc.pair][0]), _Full(plan.pairs[nc.partner][1])) if settings.nominal else ())
              for nc in plan.nulls]
    todo = [u for u in range(len(units)) if u not in known]
    provides = _provides(plan, {key for u in todo for key in units[u]})
    paths = getattr(tiles, "paths", None)

    def load(k: int) -> dict[Hashable, np.ndarray]:
        # One decode per tile: the coarse level is reduced from it, and the tile itself stays (as
        # decoded, uint8 for JPEGs) until the links that refine on it have run.
        full = tiles.gray(k, 1)
        if full.shape != plan.tile_shape:
            h, w = plan.tile_shape
            raise OfmTilingError(paths[k] if paths else None,
                                 f"tile {k} is {full.shape[1]}x{full.shape[0]} px, expected "
                                 f"{w}x{h} (all tiles must have the same size)")
        filt = coarse_level(full, settings)
        out: dict[Hashable, np.ndarray] = {}
        for key in provides[k]:
            if isinstance(key, _Strip):
                g = plan.geometry[key.pair]
                out[key] = filt[g.rect_i if key.side == 0 else g.rect_j].copy()
            else:
                out[key] = full
        return out

    def compute(t: int, a: np.ndarray, b: np.ndarray, *full: np.ndarray) -> Any:
        u = todo[t]
        if u < n_pairs:
            if settings.nominal:
                return nominal_match(full[0], full[1], plan.geometry[u], settings)
            # Refined now, accepted or not: cheaper than decoding the tiles again once acceptance
            # is known (the threshold needs every link's coarse correlation first).
            return measure_pair(a, b, plan.geometry[u], settings, *full)
        nc = plan.nulls[u - n_pairs]
        if settings.nominal:
            m = nominal_match(full[0], flipped(full[1], nc.flip), plan.geometry[nc.pair], settings)
            return m.correlation, m.compared
        return null_match(a, b, plan.geometry[nc.pair], settings.n_peaks, nc.flip)

    reporter = Progress(progress, len(provides))
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        fresh = stream(pool, sorted(provides), load, [units[u] for u in todo], compute, max(1, workers) + 1,
                       reporter.advance)
    results: list[Any] = [known.get(u) for u in range(len(units))]
    for u, result in zip(todo, fresh):
        results[u] = result
    return ScanMeasurements(results[:n_pairs], results[n_pairs:])


def _provides(plan: ScanPlan, needed: set[Hashable]) -> dict[int, list[Hashable]]:
    """The arrays each tile provides, limited to the `needed` ones (tiles providing none are left out)."""
    provides: dict[int, list[Hashable]] = defaultdict(list)
    for p, (i, j) in enumerate(plan.pairs):
        for key, tile in ((_Strip(p, 0), i), (_Strip(p, 1), j), (_Full(i), i), (_Full(j), j)):
            if key in needed and key not in provides[tile]:
                provides[tile].append(key)
    return {k: v for k, v in provides.items() if v}


class _Store:
    """Loaded arrays, each released as soon as no pending unit needs it."""

    def __init__(self, units: Sequence[tuple[Hashable, ...]]):
        self.units = units
        self.waiting = [len(set(keys)) for keys in units]
        self.users: dict[Hashable, list[int]] = defaultdict(list)
        self.refs: Counter = Counter()
        for u, keys in enumerate(units):
            for key in set(keys):
                self.users[key].append(u)
                self.refs[key] += 1
        self.arrays: dict[Hashable, Any] = {}

    def add(self, arrays: dict[Hashable, Any]) -> list[int]:
        """Store `arrays`; return the units that now have everything they need."""
        for key, arr in arrays.items():
            if self.refs[key] > 0:
                self.arrays[key] = arr
        ready = []
        for key in arrays:
            for u in self.users.get(key, ()):
                self.waiting[u] -= 1
                if self.waiting[u] == 0:
                    ready.append(u)
        return ready

    def take(self, u: int) -> list[Any]:
        """The arrays of unit `u`, releasing those no other pending unit needs."""
        keys = self.units[u]
        arrays = [self.arrays[k] for k in keys]
        for k in set(keys):
            self.refs[k] -= 1
            if self.refs[k] == 0:
                del self.arrays[k]
        return arrays


def stream(pool: ThreadPoolExecutor, order: Sequence[int], load: Callable[[int], dict],
           units: Sequence[tuple[Hashable, ...]], compute: Callable[..., Any], ahead: int,
           on_tile: Callable[[], None]) -> list:
    """Run ``compute(u, *arrays)`` for every unit as soon as the arrays (keys) it needs are loaded.

    ``load(tile)`` returns ``{key: array}`` for the keys that tile provides. Arrays are released as
    soon as no pending unit needs them. The next tile is loaded only while fewer than
    ``4 * ahead`` units are waiting to run, so decoding cannot race ahead of the computations
    (each of which holds its arrays) and memory stays bounded however long the scan.
    """
    store = _Store(units)
    futures: list[tuple[int, Future]] = []
    loading: deque[Future] = deque()
    running: deque[Future] = deque()
    tiles = iter(order)

    def submit_next() -> None:
        k = next(tiles, None)
        if k is not None:
            while len(running) >= 4 * max(1, ahead):
                running.popleft().result()
            loading.append(pool.submit(load, k))

    for _ in range(max(1, ahead)):
        submit_next()
    while loading:
        arrays = loading.popleft().result()
        submit_next()
        for u in store.add(arrays):
            futures.append((u, pool.submit(compute, u, *store.take(u))))
            running.append(futures[-1][1])
        on_tile()
    results: list = [None] * len(units)
    for u, fut in futures:
        results[u] = fut.result()
    return results
