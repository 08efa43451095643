"""Batch throughput: a few generated scans stitched by `ofm-tiling batch` here and on a local Dask cluster.

Measures wall time of the whole batch (cluster start-up excluded) and derives scans per minute and
tiles per second for: here with one scan at a time (all cores for it), here with two at a time
(cores shared), and a Dask cluster on 127.0.0.1 with one and with two single-slot workers (each
stitch given the cores divided by the number of workers).
Every configuration stitches fresh copies of the same scans. Run::

    python benchmarks/batch_throughput.py [--scans 4] [--grid 4x3] [--tile 820x616] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ofm_tiling.batch import plan_local, run_dask, run_local
from ofm_tiling.batchplan import BatchPlan, threads_per_task
from ofm_tiling.synthetic import make_scan

OPTIONS = {"check_focus": False}


def _fresh(sources: list[Path], where: Path) -> list[str]:
    shutil.rmtree(where, ignore_errors=True)
    return [str(shutil.copytree(s, where / s.name)) for s in sources]


def _row(name: str, seconds: float, outcomes) -> dict:
    tiles = sum(o.tiles or 0 for o in outcomes)
    ok = sum(o.ok for o in outcomes)
    return {"config": name, "scans": len(outcomes), "ok": ok, "tiles": tiles, "wall_s": round(seconds, 2),
            "scans_per_min": round(60 * ok / seconds, 2), "tiles_per_s": round(tiles / seconds, 2)}


def measure_local(sources: list[Path], work: Path, jobs: int) -> dict:
    """Wall time of a local batch with `jobs` scans at once (threads: the cores shared among them)."""
    scans = _fresh(sources, work)
    plan = plan_local(scans, OPTIONS, jobs=jobs)
    plan = BatchPlan(jobs, plan.threads, plan.budget_bytes, plan.largest_bytes, plan.limited_by)
    t0 = time.perf_counter()
    outcomes = run_local(scans, OPTIONS, plan, quiet=True)
    return _row(f"here, {jobs} at a time, {plan.threads} thread(s) each", time.perf_counter() - t0, outcomes)


def measure_dask(sources: list[Path], work: Path, workers: int) -> dict:
    """Wall time of a batch on a fresh local Dask cluster of `workers` single-thread worker processes."""
    from distributed import LocalCluster

    scans = _fresh(sources, work)
    # All workers share this machine's cores: each stitch gets its share (as `--workers` would set).
    options = {**OPTIONS, "workers": threads_per_task(os.cpu_count() or 1, workers)}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        t0 = time.perf_counter()
        outcomes = run_dask(scans, options, cluster.scheduler_address)
        seconds = time.perf_counter() - t0
    return _row(f"Dask, {workers} worker(s), {options['workers']} thread(s) each", seconds, outcomes)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--grid", default="4x3")
    parser.add_argument("--tile", default="820x616")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    grid = tuple(int(v) for v in args.grid.split("x"))
    tile = tuple(int(v) for v in args.tile.split("x"))
    with tempfile.TemporaryDirectory(prefix="ofm-batch-bench-") as tmp:
        root = Path(tmp)
        sources = [root / "src" / f"scan{k}" for k in range(args.scans)]
        for k, folder in enumerate(sources):
            make_scan(folder, grid=grid, tile_shape=tile[::-1], planes=1, seed=k)
        rows = []
        for measure, n in ((measure_local, 1), (measure_local, 2), (measure_dask, 1), (measure_dask, 2)):
            load = os.getloadavg()[0]
            rows.append({**measure(sources, root / "run", n), "load_before": round(load, 2)})
    for row in rows:
        print(f"{row['config']:<42} {row['wall_s']:>7.1f} s  {row['scans_per_min']:>6.1f} scans/min  "
              f"{row['tiles_per_s']:>6.1f} tiles/s  ({row['ok']}/{row['scans']} ok)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
