"""The measured child tasks: each runs in its own process, started as ``run.py --child TASK ARGS``.

Every task takes one dict of arguments (decoded from the JSON on the command line) and returns a
dict of results, which `measure.emit` reports to the parent.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from measure import emit


def task_index(a: dict) -> dict:
    from ofm_tiling.collect import plan_tiles, select_image
    from ofm_tiling.scan import read_scan

    def once():
        scan = read_scan(a["scan"])
        selections = [select_image(p, mode="tag") for p in scan.positions]
        plan_tiles(scan, selections)
        return len(scan.positions), sum(len(p.images) for p in scan.positions)

    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        n_pos, n_img = once()
        times.append(time.perf_counter() - t0)
    return {"first_s": times[0], "warm_s": statistics.median(times[1:]), "all_s": times,
            "positions": n_pos, "images": n_img}


def task_collect(a: dict) -> dict:
    from ofm_tiling.collect import collect

    t0 = time.perf_counter()
    c = collect(a["scan"], out=a["use"])
    return {"collect_s": time.perf_counter() - t0, "tiles": len(c.tiles),
            "bytes": sum(p.stat().st_size for p in c.paths)}


def _use_tiles(use: Path):
    from PIL import Image

    from ofm_tiling.tileconfig import read_tile_configuration

    names, stage = read_tile_configuration(use / "TileConfiguration.txt")
    paths = [use / n for n in names]
    with Image.open(paths[0]) as im:
        w, h = im.size
    return names, stage, paths, (h, w)


def task_register(a: dict) -> dict:
    from ofm_tiling.register import JpegTiles, register
    from ofm_tiling.solve import solve

    use = Path(a["use"])
    names, stage, paths, shape = _use_tiles(use)
    t0 = time.perf_counter()
    reg = register(JpegTiles(paths), stage, tile_shape=shape, workers=a["workers"])
    t1 = time.perf_counter()
    sol = solve(stage, reg.links)
    t2 = time.perf_counter()
    Path(a["positions_out"]).write_text(json.dumps({"names": names, "positions": sol.positions.tolist()}))
    return {"register_s": t1 - t0, "solve_s": t2 - t1, "total_s": t2 - t0, "links": len(reg.links),
            "accepted": sum(bool(link.accepted) for link in reg.links)}


def task_fuse(a: dict) -> dict:
    import numpy as np

    from ofm_tiling.fuse import fuse_bands, mosaic_shape
    from ofm_tiling.imageio import read_rgb
    from ofm_tiling.options import DEFAULT_QUALITY
    from ofm_tiling.pyramid import write_ome_tiff

    use = Path(a["use"])
    _, _, paths, shape = _use_tiles(use)
    doc = json.loads(Path(a["positions"]).read_text())
    pos = np.asarray(doc["positions"], dtype=float)
    pos = pos - pos.min(axis=0)
    out = Path(a["out"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mshape = mosaic_shape(pos, shape)
    bands = fuse_bands(lambda i: read_rgb(paths[i]), pos, shape, workers=a["workers"])
    write_ome_tiff(out / "mosaic.ome.tif", mshape, bands, compression="jpeg", quality=DEFAULT_QUALITY,
                   preview_path=out / "preview.jpg", workers=a["workers"], name="benchmark")
    return {"fuse_write_s": time.perf_counter() - t0, "mosaic_shape": list(mshape),
            "mosaic_bytes": (out / "mosaic.ome.tif").stat().st_size}


def task_stitch(a: dict) -> dict:
    """The whole stitch with default settings: what `ofm-tiling stitch` does (the command adds only its
    printing), with every output a user gets."""
    from ofm_tiling import stitch

    t0 = time.perf_counter()
    r = stitch(a["scan"], out=a["out"], use=a["use"], workers=a["workers"])
    total = time.perf_counter() - t0
    report = json.loads(r.report.read_text())
    focus = report.get("extra", {}).get("focus", [])
    return {"timings": r.timings, "in_process_s": total, "mosaic_shape": list(r.shape),
            "mosaic_bytes": r.mosaic.stat().st_size, "notes": r.notes,
            "focus": [{k: row.get(k) for k in ("position", "message", "measure")} for row in focus],
            "report_keys": sorted(report) if isinstance(report, dict) else None}


def task_startup(a: dict) -> dict:
    """`ofm-tiling --help` as a user runs it: a fresh process each time (median of several)."""
    times = []
    for _ in range(a.get("repeat", 7)):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ofm_tiling.cli", "--help"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return {"help_s": statistics.median(times), "all_s": times}


def task_floor(a: dict) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from ofm_tiling.imageio import read_rgb
    from ofm_tiling.options import DEFAULT_QUALITY
    from ofm_tiling.pyramid import write_ome_tiff

    use = Path(a["use"])
    _, _, paths, (th, tw) = _use_tiles(use)
    keep = max(1, min(len(paths), int(a.get("keep", 8))))
    kept: list = [None] * keep
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a["workers"]) as pool:
        for i, img in enumerate(pool.map(read_rgb, paths)):
            if i < keep:
                kept[i] = img
            del img
    t_decode = time.perf_counter() - t0

    H, W = a["shape"]
    band_h = 512

    def bands():
        for y0 in range(0, H, band_h):
            y1 = min(H, y0 + band_h)
            band = np.empty((y1 - y0, W, 3), np.uint8)
            y = y0
            while y < y1:
                trow, ry = divmod(y, th)
                n = min(y1 - y, th - ry)
                for x in range(0, W, tw):
                    k = (x // tw + trow) % keep
                    m = min(tw, W - x)
                    band[y - y0:y - y0 + n, x:x + m] = kept[k][ry:ry + n, :m]
                y += n
            yield y0, band

    out = Path(a["out"])
    out.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    write_ome_tiff(out / "floor.ome.tif", (H, W), bands(), compression="jpeg", quality=DEFAULT_QUALITY,
                   preview_path=out / "preview.jpg", workers=a["workers"], name="floor")
    t_encode = time.perf_counter() - t1
    return {"decode_s": t_decode, "encode_s": t_encode, "floor_s": t_decode + t_encode, "tiles": len(paths),
            "mosaic_shape": [H, W], "bytes": (out / "floor.ome.tif").stat().st_size}


def task_decoders(a: dict) -> dict:
    """Decode the same tiles with each decoder, alternating, on one thread: ms per tile."""
    import numpy as np
    from PIL import Image

    from ofm_tiling.imageio import read_rgb

    def pillow(path):
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    _, _, paths, _ = _use_tiles(Path(a["use"]))
    paths = paths[: a.get("tiles", 20)]
    times: dict[str, list[float]] = {"imagecodecs": [], "pillow": []}
    for path in paths:
        for name, read in (("imagecodecs", read_rgb), ("pillow", pillow)):
            t0 = time.perf_counter()
            read(path)
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(v) for name, v in times.items()} | {"tiles": len(paths)}


def task_edf(a: dict) -> dict:
    from ofm_tiling.allinfocus import edf_from_paths

    times = []
    for stack in a["stacks"]:
        t0 = time.perf_counter()
        img = edf_from_paths(stack, workers=a["workers"])
        times.append(time.perf_counter() - t0)
        shape = list(img.shape)
        del img
    return {"per_position_s": times, "mean_s": statistics.fmean(times), "shape": shape,
            "planes": len(a["stacks"][0])}


TASKS = {"startup": task_startup, "index": task_index, "collect": task_collect, "register": task_register,
         "fuse": task_fuse, "stitch": task_stitch, "floor": task_floor, "edf": task_edf, "decoders": task_decoders}


def run_task(task: str, args_json: str) -> None:
    """Run one task in this process and report its result to the parent (`measure.measure`)."""
    emit(TASKS[task](json.loads(args_json)))
