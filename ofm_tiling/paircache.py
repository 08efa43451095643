"""On-disk cache of pairwise registration results, so unchanged pairs are not measured again.

A pair's measurement (`ofm_tiling.register.measure.measure_pair`) and a null comparison are pure
functions of the two tiles' pixels, the pair's strip geometry and the `MatchSettings`; the cache
key is a hash of exactly these: the tiles by the hash of their file bytes (no decode), the
geometry and the settings by value. Acceptance is not cached: it needs the whole scan's
statistics and is always decided again.

The cache lives in the output folder (``pair-cache.json``). Because that folder is rebuilt on
every run, a run reads the cache of the previous result and writes the entries it used into the
new (staging) folder: the cache holds one scan's pairs and does not grow from run to run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .files import write_text_atomic

if TYPE_CHECKING:
    from .register.measure import MatchSettings, PairMeasurement
    from .register.pairs import PairGeometry, ScanPlan
    from .register.tiles import TileImages

__all__ = ["PAIR_CACHE", "PairCache", "tile_digest", "tile_digests"]

log = logging.getLogger("ofm_tiling")

#: File name of the cache in the output folder.
PAIR_CACHE = "pair-cache.json"
_VERSION = 1
_CHUNK = 1 << 20


def _hasher():
    # SHA-256 runs on the CPU's SHA instructions: about twice blake2b's speed here (1.0 vs 0.43 GB/s).
    return hashlib.sha256()


def tile_digest(tiles: TileImages, k: int, memo: dict | None = None) -> str:
    """Hash of tile `k`'s content: its file's bytes (`JpegTiles`), else its pixels.

    `memo` keeps file hashes by (path, size, modification time), so a file is read once per
    process however many runs ask for it.
    """
    paths = getattr(tiles, "paths", None)
    h = _hasher()
    if paths is None:
        h.update(np.ascontiguousarray(tiles.gray(k, 1)).tobytes())
        return h.hexdigest()[:32]
    path = os.fspath(paths[k])
    st = os.stat(path)
    stamp = (path, st.st_size, st.st_mtime_ns)
    if memo is not None and stamp in memo:
        return memo[stamp]
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)  # releases the GIL: files are hashed on several threads at once
    if memo is not None:
        memo[stamp] = h.hexdigest()[:32]
    return h.hexdigest()[:32]


def tile_digests(tiles: TileImages, indices: Sequence[int], memo: dict | None = None, *,
                 workers: int | None = None) -> dict[int, str]:
    """`tile_digest` of each tile in `indices`, on `workers` threads (default: all cores)."""
    workers = max(1, min(len(indices), workers or os.cpu_count() or 1))
    if workers == 1:
        return {k: tile_digest(tiles, k, memo) for k in indices}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(indices, pool.map(lambda k: tile_digest(tiles, k, memo), indices)))


def _geometry(g: PairGeometry) -> list:
    return [[s.start, s.stop] for s in (*g.rect_i, *g.rect_j)] + [np.asarray(g.base).tolist(),
                                                               np.asarray(g.lo).tolist(),
                                                               np.asarray(g.hi).tolist(), repr(float(g.min_area))]


def _key(*parts: Any) -> str:
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=20).hexdigest()


def unit_keys(plan: ScanPlan, settings: MatchSettings, digests: Sequence[str]) -> list[str]:
    """One key per work unit of `plan`, in `measure_scan`'s order: pairs, then null comparisons."""
    s = repr(settings)
    keys = [_key("pair", digests[i], digests[j], _geometry(plan.geometry[p]), s)
            for p, (i, j) in enumerate(plan.pairs)]
    for nc in plan.nulls:
        g, partner = plan.geometry[nc.pair], plan.geometry[nc.partner]
        keys.append(_key("null", digests[plan.pairs[nc.pair][0]], digests[plan.pairs[nc.partner][1]],
                         _geometry(g), [[v.start, v.stop] for v in partner.rect_j], nc.flip, s))
    return keys


def _encode(value: Any) -> Any:
    if isinstance(value, tuple):  # a null comparison: (correlation, pixels compared)
        return [float(value[0]), int(value[1])]
    return {"coarse_shift": value.coarse_shift, "correlation": float(value.correlation),
            "compared": int(value.compared), "refined_shift": value.refined_shift,
            "fine_correlation": float(value.fine_correlation), "problem": value.problem}


def _decode(value: Any) -> Any:
    from .register.measure import PairMeasurement

    if isinstance(value, list):
        return float(value[0]), int(value[1])
    tup = (lambda v: None if v is None else (float(v[0]), float(v[1])))
    return PairMeasurement(tup(value["coarse_shift"]), float(value["correlation"]), int(value["compared"]),
                           tup(value["refined_shift"]), float(value["fine_correlation"]), str(value["problem"]))


class PairCache:
    """Pairwise results read from one cache file and written (the entries used) to another.

    Parameters
    ----------
    source : path-like, optional
        Cache file to read (missing: start empty; unreadable: a warning, start empty).
    target : path-like, optional
        Where `save` writes the entries looked up or stored since the cache was made.

    Attributes
    ----------
    hits, misses : int
        Work units found in the cache and measured afresh, over the cache's life.
    """

    def __init__(self, source: str | os.PathLike | None = None, target: str | os.PathLike | None = None):
        self.source = Path(source) if source is not None else None
        self.target = Path(target) if target is not None else None
        self.entries: dict[str, Any] = _read(self.source) if self.source is not None else {}
        self.used: dict[str, Any] = {}
        self.memo: dict = {}
        self.hits = self.misses = 0

    def begin(self) -> None:
        """Start a new run: `save` writes only the entries used from now on."""
        self.used = {}

    def keys(self, tiles: TileImages, plan: ScanPlan, settings: MatchSettings) -> list[str]:
        """The key of every work unit of `plan` on `tiles`."""
        needed = sorted({k for pair in plan.pairs for k in pair})
        digests = dict.fromkeys(range(len(tiles)), "")
        digests.update(tile_digests(tiles, needed, self.memo))
        return unit_keys(plan, settings, [digests[k] for k in range(len(tiles))])

    def lookup(self, keys: Sequence[str]) -> dict[int, PairMeasurement | tuple[float, int]]:
        """The cached results, by position in `keys`."""
        found = {}
        for u, k in enumerate(keys):
            try:
                found[u] = _decode(self.entries[k])
            except (KeyError, TypeError, ValueError, IndexError):
                continue  # not cached, or a damaged entry: measured again
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        for u in found:
            self.used[keys[u]] = self.entries[keys[u]]
        return found

    def store(self, keys: Sequence[str], results: Sequence[Any]) -> None:
        """Remember the result of every unit (cached or fresh)."""
        for k, value in zip(keys, results):
            self.entries[k] = self.used[k] = _encode(value)

    def save(self) -> None:
        """Write the entries used since the cache was made to `target` (atomically)."""
        if self.target is None:
            return
        doc = {"version": _VERSION, "entries": self.used}
        write_text_atomic(self.target, json.dumps(doc, separators=(",", ":")) + "\n")


def _read(path: Path) -> dict[str, Any]:
    """The entries of a cache file; empty when it is missing, with a warning when it is unusable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning(f"{path}: pair cache not readable ({exc}); every pair is measured again")
        return {}
    if not isinstance(doc, dict) or doc.get("version") != _VERSION or not isinstance(doc.get("entries"), dict):
        log.warning(f"{path}: pair cache of another version; every pair is measured again")
        return {}
    return doc["entries"]
