"""Live stitching: how long `ofm-tiling watch` takes to refresh after each new position.

A generated smart-stack scan of 8 MP tiles (one plane per position, procedural texture) is copied
position by position into an empty folder by a background writer, as the microscope would write it,
while `ofm_tiling.watch.watch` follows it; every refresh's wall time and tile count is recorded,
then the final stitch. Run::

    python benchmarks/watch_refresh.py [--grid 4x3] [--tile 3280x2464] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from ofm_tiling.synthetic import make_scan
from ofm_tiling.watch import watch


def _write_positions(source: Path, target: Path, started: threading.Event, pause: float) -> None:
    """Copy the scan one position folder at a time, the scan-level data.json last."""
    started.wait()
    folders = sorted(p for p in source.iterdir() if p.is_dir())
    for folder in folders:
        shutil.copytree(folder, target / folder.name)
        time.sleep(pause)
    shutil.copy2(source / "data.json", target / "data.json")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", default="4x3")
    p.add_argument("--tile", default="3280x2464", help="WxH")
    p.add_argument("--pause", type=float, default=3.0, help="seconds between positions (the microscope's pace)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    cols, rows = (int(v) for v in args.grid.split("x"))
    w, h = (int(v) for v in args.tile.split("x"))
    with tempfile.TemporaryDirectory(prefix="ofm-watch-bench-") as tmp:
        source, target = Path(tmp) / "source", Path(tmp) / "scan"
        make_scan(source, grid=(cols, rows), tile_shape=(h, w), planes=1, source="procedural", truth_png=False)
        target.mkdir()
        refreshes: list[dict] = []
        started = threading.Event()
        writer = threading.Thread(target=_write_positions, args=(source, target, started, args.pause), daemon=True)
        writer.start()
        started.set()
        t0 = time.perf_counter()
        result = watch(target, poll=0.5, check_focus=False,
                       on_refresh=lambda r: refreshes.append({"tiles": r.tiles, "seconds": r.seconds,
                                                              "accepted": r.accepted, "links": r.links}))
        total = time.perf_counter() - t0
    later = [r["seconds"] for r in refreshes[1:]]
    out = {"grid": args.grid, "tile": args.tile, "pause_s": args.pause, "refreshes": refreshes,
           "refresh_median_s": statistics.median(later) if later else None,
           "refresh_max_s": max(later) if later else None, "final_stitch_timings_s": result.timings,
           "watch_total_s": total}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
