"""How many scans a batch stitches at once on this machine: memory and cores, estimated per scan.

A stitch's peak memory follows the width of its mosaic, not its length: streamed fusion holds
about two and a half rows of decoded tiles (BENCHMARKS.md, "Memory against scan length": a scan
20 tiles of 8 MP wide peaks at ~1.5 GB, 10 wide at ~0.9 GB, whatever the number of rows). The
model below is fitted to those measurements; the plan is then a pure function of the estimates,
the memory available now and the number of cores.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OfmTilingError
from .layout import stage_to_pixels
from .scan import read_scan

__all__ = ["ScanEstimate", "BatchPlan", "peak_bytes", "band_columns", "estimate_scan", "plan_batch",
           "threads_per_task", "MEMORY_HEADROOM"]

#: Python, numpy, codecs and the bookkeeping of a small scan (165 MB measured for 4x4 small tiles).
BASE_BYTES = 150_000_000
#: Decoded RGB tiles held while fusing, per tile a band crosses (fitted: 891 MB at 10 wide, 1508 MB at 20).
BAND_TILE_ROWS = 2.5
#: Decoded RGB tiles held independently of the width (registration strips, focus survey, writer).
FIXED_TILES = 5.5
#: Extra RGB tiles per thread for an all-in-focus (edf) image of a 9-plane stack (635 MB, 2 threads, 8 MP).
EDF_TILES_PER_THREAD = 13.0
#: Fraction of MemAvailable a batch plans to fill; the rest absorbs estimate errors and other programs.
MEMORY_HEADROOM = 0.8


@dataclass(frozen=True)
class ScanEstimate:
    """What a scan will cost to stitch.

    Attributes
    ----------
    scan : Path
        The scan folder.
    tiles : int
        Positions with images (0 when the scan could not be read; it will fail on its own).
    tile_shape : tuple of int
        (height, width) of a tile in pixels.
    columns : int
        Tiles a horizontal line through the mosaic crosses at most (what a fusion band holds).
    peak_bytes : int
        Estimated peak resident memory of stitching it.
    """

    scan: Path
    tiles: int
    tile_shape: tuple[int, int]
    columns: int
    peak_bytes: int


@dataclass(frozen=True)
class BatchPlan:
    """Scans at once and threads per scan.

    Attributes
    ----------
    jobs : int
        Scans stitched at the same time (each in its own process).
    threads : int
        ``workers`` passed to every stitch, so that jobs x threads is about the number of cores.
    budget_bytes : int
        Memory the plan may fill (`MEMORY_HEADROOM` of what is available).
    largest_bytes : int
        Largest per-scan peak estimate.
    limited_by : str
        What set `jobs`: "scans", "cores", "memory", "jobs" (the caller's cap) or "fiji".
    """

    jobs: int
    threads: int
    budget_bytes: int
    largest_bytes: int
    limited_by: str

    @property
    def over_budget(self) -> bool:
        """Whether even one scan at a time is estimated to exceed the memory budget."""
        return self.largest_bytes > self.budget_bytes


def peak_bytes(tile_shape: tuple[int, int], columns: int, *, focus: str = "central", threads: int = 1) -> int:
    """Estimated peak memory of stitching a scan with tiles of `tile_shape` and `columns` tiles per band."""
    tile = int(tile_shape[0]) * int(tile_shape[1]) * 3
    tiles_held = FIXED_TILES + BAND_TILE_ROWS * max(1, columns)
    if focus == "edf":
        tiles_held += EDF_TILES_PER_THREAD * max(1, threads)
    return int(BASE_BYTES + tiles_held * tile)


def band_columns(positions: np.ndarray, tile_height: float) -> int:
    """Most tiles that one horizontal line through a tile's middle crosses.

    Parameters
    ----------
    positions : (N, 2) array
        Tile top-left corners (x, y) in pixels.
    tile_height : float
        Tile height in pixels.
    """
    y = np.asarray(positions, float).reshape(-1, 2)[:, 1]
    if len(y) == 0:
        return 0
    middles = y + tile_height / 2
    crossed = (y[None, :] <= middles[:, None]) & (middles[:, None] < y[None, :] + tile_height)
    return int(crossed.sum(axis=1).max())


def _distinct(values: np.ndarray) -> int:
    """Clusters of 1-D stage coordinates (a new one at every gap over 5% of the range)."""
    v = np.sort(np.asarray(values, float))
    span = v[-1] - v[0] if len(v) else 0.0
    if span <= 0:
        return 1
    return 1 + int((np.diff(v) > 0.05 * span).sum())


def _columns_of(scan, tile_shape: tuple[int, int], grid: tuple[int, int] | None) -> int:
    """Band width in tiles from the grid, the camera-stage mapping, or distinct stage x values."""
    if grid is not None:
        return int(grid[0])
    firsts = [p.images[0] for p in scan.positions if p.images and p.images[0].stage is not None]
    if not firsts:
        return len(scan.positions)  # no stage positions: assume one long row (the safe side)
    stage = np.array([m.stage[:2] for m in firsts], float)
    meta = firsts[0]
    if meta.csm is not None and meta.csm_width:
        pixels = stage_to_pixels(stage, np.asarray(meta.csm, float), csm_width=meta.csm_width,
                                 image_width=tile_shape[1])
        return band_columns(pixels, tile_shape[0])
    return _distinct(stage[:, 0])


def estimate_scan(scan: str | os.PathLike, *, focus: str = "central", grid: tuple[int, int] | None = None,
                  threads: int = 1) -> ScanEstimate:
    """Estimate a scan's peak stitching memory from its JPEG headers (nothing is decoded).

    A scan that cannot be read gets the base estimate: its stitch will fail quickly with its error.
    """
    path = Path(scan)
    try:
        found = read_scan(path)
    except OfmTilingError:
        return ScanEstimate(path, 0, (0, 0), 0, BASE_BYTES)
    metas = [p.images[0] for p in found.positions if p.images]
    if not metas:
        return ScanEstimate(path, 0, (0, 0), 0, BASE_BYTES)
    tile_shape = (max(m.height for m in metas), max(m.width for m in metas))
    columns = _columns_of(found, tile_shape, grid)
    return ScanEstimate(path, len(metas), tile_shape, columns,
                        peak_bytes(tile_shape, columns, focus=focus, threads=threads))


def threads_per_task(cores: int, tasks_at_once: int) -> int:
    """Threads each of `tasks_at_once` concurrent stitches gets so that together they fill `cores`."""
    return max(1, int(cores) // max(1, int(tasks_at_once)))


def plan_batch(peaks: Sequence[int], *, cores: int, available_bytes: int, jobs: int | None = None,
               one_at_a_time: bool = False) -> BatchPlan:
    """Decide how many scans to stitch at once.

    Parameters
    ----------
    peaks : sequence of int
        Estimated peak memory of every scan (`ScanEstimate.peak_bytes`).
    cores : int
        CPU cores to use.
    available_bytes : int
        Memory available now (`available_memory`).
    jobs : int, optional
        At most this many at once (then cores do not cap the number; memory still does).
    one_at_a_time : bool
        Run one scan at a time (the Fiji backend gives each Java most of the available memory).

    Returns
    -------
    BatchPlan
        At least one job, whatever the estimates: a scan that may not fit is still tried alone.
    """
    if jobs is not None and jobs < 1:
        raise OfmTilingError(None, f"jobs must be at least 1, not {jobs}")
    budget = int(available_bytes * MEMORY_HEADROOM)
    largest = max(peaks, default=BASE_BYTES)
    caps = {"scans": max(1, len(peaks)), "memory": max(1, budget // max(1, largest))}
    if jobs is not None:
        caps["jobs"] = jobs
    else:
        caps["cores"] = max(1, cores)
    if one_at_a_time:
        caps["fiji"] = 1
    limited_by = min(caps, key=lambda k: caps[k])
    n = caps[limited_by]
    return BatchPlan(jobs=n, threads=threads_per_task(cores, n), budget_bytes=budget, largest_bytes=largest,
                     limited_by=limited_by)
