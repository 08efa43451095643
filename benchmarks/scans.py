"""The generated benchmark scans: their settings, names and the cache that keeps them between runs."""
from __future__ import annotations

import os
import time
from pathlib import Path

from measure import log

STAGE_ERROR_PX = 25.0
SEED = 0


def fmt_pair(p) -> str:
    """A grid or tile size as written in names and reports: ``COLSxROWS`` or ``WxH``."""
    return f"{p[0]}x{p[1]}"


def blank_indices(grid: tuple[int, int], count: int) -> list[int]:
    """Scan-order (raster) indices of `count` interior positions to show blank glass."""
    cols, rows = grid
    spots = [(0.4, 0.35), (0.6, 0.65), (0.25, 0.75)]
    out = []
    for fx, fy in spots[:count]:
        c, r = round(fx * (cols - 1)), round(fy * (rows - 1))
        out.append(r * cols + c)
    return sorted(set(out))


def scan_name(grid, tile, planes, blank) -> str:
    return f"scan-{fmt_pair(grid)}-{fmt_pair(tile)}-z{planes}-e{STAGE_ERROR_PX:g}-b{blank}-s{SEED}"


def ensure_scan(cache: Path, grid, tile, planes, blank, workers) -> Path:
    """Generate a scan into the cache, or reuse it (complete scans hold truth.json)."""
    from ofm_tiling.synthetic import make_scan

    path = cache / scan_name(grid, tile, planes, blank)
    if (path / "truth.json").is_file():
        log(f"reusing cached scan {path.name}")
        return path
    tmp = path.with_name(path.name + ".partial")
    log(f"generating scan {path.name} (once; cached for later runs)")
    t0 = time.perf_counter()
    cache.mkdir(parents=True, exist_ok=True)
    make_scan(tmp, grid=grid, tile_shape=tile[::-1], planes=planes, layout="v2", source="procedural",
              stage_error_px=STAGE_ERROR_PX, blank_tiles=blank_indices(grid, blank), seed=SEED,
              workers=workers, truth_png=False, overwrite=True)
    os.replace(tmp, path)
    log(f"  generated in {time.perf_counter() - t0:.0f} s")
    return path


