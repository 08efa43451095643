"""Benchmarking one scan: our stitch, its stages, the floor and openflexure-stitching, each in its own process.

`bench_scan` reads as the list of what is measured on a scan; `scaling_row` and `memory_row` reduce
a scan's record to one row of the scaling and memory tables.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from measure import child, log
from ofs import accuracy, read_positions, run_ofs
from scans import fmt_pair


def best(recs: list[dict]) -> dict:
    ok = [r for r in recs if r["returncode"] == 0]
    return min(ok, key=lambda r: r["wall_s"]) if ok else recs[-1]


def bench_scan(scan: Path, work: Path, *, workers: int, repeat: int, stages: bool, floor: bool,
               ofs_exe: Path | None, ofs_timeout: float, edf_positions: int) -> dict:
    from ofm_tiling.synthetic import load_truth

    truth = load_truth(scan)
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"scan": scan.name, "grid": list(truth.grid), "tile_size": list(truth.tile_shape[::-1]),
                 "planes": truth.planes, "positions": len(truth.positions),
                 "blank_positions": [p.folder for p in truth.positions if p.blank],
                 "stage_error_px": truth.stage_error_px, "overlap": truth.overlap}
    log(f"scan {scan.name}: {len(truth.positions)} positions x {truth.planes} planes")

    use = _bench_stitch(res, scan, work, workers=workers, repeat=repeat, truth=truth, floor=floor)
    ok = res["stitch"]["returncode"] == 0
    if stages and ok:  # the same scan again into the same folders: pairs come from the pair cache
        res["rerun"] = child("stitch", {"scan": str(scan), "out": str(use.parent / "stitched"), "use": str(use),
                                        "workers": workers}, log_path=work / "rerun.log")
    if stages:
        res["startup"] = child("startup", {"repeat": 7}, log_path=work / "startup.log")
        res["stages"] = _bench_stages(scan, work, workers=workers)
    if floor and ok:
        res["decoders"] = child("decoders", {"use": str(use)}, log_path=work / "decoders.log")
    if edf_positions and truth.planes > 1:
        chosen = [p for p in truth.positions if not p.blank][:edf_positions]
        stacks = [[str(scan / p.folder / f) for f in p.files] for p in chosen]
        res["edf"] = child("edf", {"stacks": stacks, "workers": workers}, log_path=work / "edf.log")
    if ofs_exe is not None and ok:
        rec = run_ofs(ofs_exe, use, work / "ofs", timeout=ofs_timeout)
        if rec.get("positions"):
            rec["accuracy"] = accuracy(rec.pop("positions"), use, truth)
        res["ofs"] = rec
    return res


def _bench_stitch(res: dict, scan: Path, work: Path, *, workers: int, repeat: int, truth, floor: bool) -> Path:
    """Our stitch as a whole, repeated (the best wall time is the headline), and its accuracy; with
    `floor`, each stitch is followed by a run of the floor, so that both see the machine alike.

    Adds ``stitch_runs``, ``stitch``, ``floor_runs``, ``floor`` and the accuracy records to `res`;
    returns the best run's ``use/``.
    """
    runs, floors = [], []
    for k in range(repeat):
        run = work / f"stitch-{k}"
        shutil.rmtree(run, ignore_errors=True)
        runs.append(child("stitch", {"scan": str(scan), "out": str(run / "stitched"), "use": str(run / "use"),
                                     "workers": workers}, log_path=run.with_suffix(".log")))
        if floor and runs[-1]["returncode"] == 0:
            floors.append(_floor_run(runs[-1]["result"]["mosaic_shape"], run / "use", work, workers=workers, k=k))
    res["stitch_runs"] = runs
    res["stitch"] = best(runs)
    if floors:
        res["floor_runs"] = floors
        res["floor"] = best(floors)  # by wall time, as the stitch: the headline is wall over wall
    use = work / f"stitch-{runs.index(res['stitch'])}" / "use"
    if res["stitch"]["returncode"] == 0:
        res["accuracy_ours"] = accuracy(read_positions(use / "TileConfiguration.registered.txt"), use, truth)
        res["accuracy_stage"] = accuracy(read_positions(use / "TileConfiguration.txt"), use, truth)
    elif (use / "TileConfiguration.txt").is_file():
        res["accuracy_stage"] = accuracy(read_positions(use / "TileConfiguration.txt"), use, truth)
    return use


def _floor_run(shape: list, use: Path, work: Path, *, workers: int, k: int) -> dict:
    """One run of the floor for a mosaic of `shape` from the tiles in `use`."""
    shutil.rmtree(work / "floor", ignore_errors=True)
    rec = child("floor", {"use": str(use), "shape": shape, "out": str(work / "floor"), "workers": workers},
                log_path=work / f"floor-{k}.log")
    shutil.rmtree(work / "floor", ignore_errors=True)
    return rec


def _bench_stages(scan: Path, work: Path, *, workers: int) -> dict:
    """Each stage in its own process: indexing, collect, registration + solve, fusion + writing."""
    s: dict = {}
    s["index"] = child("index", {"scan": str(scan)}, log_path=work / "index.log")
    cuse = work / "collect" / "use"
    shutil.rmtree(cuse.parent, ignore_errors=True)
    s["collect"] = child("collect", {"scan": str(scan), "use": str(cuse)}, log_path=work / "collect.log")
    if s["collect"]["returncode"] != 0:
        return s
    reg_pos = work / "registered.json"
    s["register"] = child("register", {"use": str(cuse), "workers": workers, "positions_out": str(reg_pos)},
                          log_path=work / "register.log")
    if s["register"]["returncode"] == 0:
        shutil.rmtree(work / "fuse", ignore_errors=True)
        s["fuse"] = child("fuse", {"use": str(cuse), "positions": str(reg_pos), "out": str(work / "fuse"),
                                   "workers": workers}, log_path=work / "fuse.log")
    return s


def scaling_row(grid, r: dict) -> dict:
    """One row of the scaling table from `bench_scan`'s record `r` of a scaling scan."""
    row = {"grid": fmt_pair(grid), "tiles": r["positions"], "load": (r["stitch"].get("load_before") or [None])[0]}
    if r["stitch"]["returncode"] == 0:
        t = r["stitch"]["result"]["timings"]
        ms = r["stitch"]["result"]["mosaic_shape"]
        row.update(ours_wall_s=r["stitch"]["wall_s"], ours_cpu_s=r["stitch"]["cpu_s"],
                   ours_rss_mb=r["stitch"]["peak_rss_mb"], ours_registration_s=t["registration"],
                   ours_fusion_s=t["fusion"], ours_collect_s=t["collect"], mosaic_mpx=ms[0] * ms[1] / 1e6,
                   ours_max_err_px=(r.get("accuracy_ours") or {}).get("textured_max_px"))
    ofs = r.get("ofs")
    if ofs and ofs["returncode"] == 0:
        row.update(ofs_wall_s=ofs["wall_s"], ofs_cpu_s=ofs["cpu_s"], ofs_rss_mb=ofs["peak_rss_mb"],
                   ofs_max_err_px=(ofs.get("accuracy") or {}).get("textured_max_px"))
        if "ours_wall_s" in row:
            row["ofs_over_ours"] = ofs["wall_s"] / row["ours_wall_s"]
    row["raw"] = r
    return row


def memory_row(grid, r: dict) -> dict:
    """One row of the memory-against-scan-length table from `bench_scan`'s record `r`."""
    st = r["stitch"]
    row = {"grid": fmt_pair(grid), "tiles": r["positions"], "returncode": st["returncode"],
           "load": (st.get("load_before") or [None])[0]}
    if st["returncode"] == 0:
        ms = st["result"]["mosaic_shape"]
        row.update(wall_s=st["wall_s"], rss_mb=st["peak_rss_mb"], mosaic=ms, mosaic_mb=3 * ms[0] * ms[1] / 2**20,
                   max_err_px=(r.get("accuracy_ours") or {}).get("textured_max_px"))
    return row
