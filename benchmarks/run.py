"""Benchmark ofm-tiling on full-size smart-stack scans, side by side with openflexure-stitching.

One run measures, on the same generated scan with known truth:

* **ofm-tiling stitch** (built-in backend) as one command: wall time, CPU time (user + sys),
  peak resident memory, and its own stage timings (collect, registration, fusion + writing);
* each stage again in its own process, so each has its own peak memory:
  collect **indexing** (JPEG header reads, selection of the tagged image, ordering, layout; the
  files are already in the page cache, and the figure is the median of 3 repeats after a first
  one in the same process), collect **copying** (a full ``collect`` minus indexing),
  **registration** (pairwise registration + global solve) and **fusion + writing** (feathered
  fusion streamed into the JPEG-compressed pyramidal OME-TIFF and its preview);
* the **floor**: what any stitcher producing the same output must at least do. It is the sum of
  (a) decoding every collected (central) tile once at full resolution in RGB on ``--workers``
  threads, with ``ofm_tiling.imageio.read_rgb`` (libjpeg-turbo through imagecodecs, straight into
  numpy: the decoder the fusion uses, and about 3x faster here than Pillow plus a conversion to
  numpy), and (b) writing an OME-TIFF of exactly our mosaic's size with the same
  writer and settings (``ofm_tiling.pyramid.write_ome_tiff``: 512 px JPEG tiles at the default quality,
  full pyramid, preview), from bands assembled by placing decoded tiles edge to edge on a grid
  (real image content, so JPEG costs the same; no registration, no overlap, no blending). Our
  total is reported as a ratio of it;
* **openflexure-stitching 0.3.1** in its own virtual environment (``benchmarks/.venv-ofs``,
  created on first use with pip: ``openflexure-stitching==0.3.1`` and ``pyvips-binary``, the
  libvips that its ``--stitch_tiff`` needs), run as ``openflexure-stitch FOLDER -o OUT
  --stitch_tiff`` on a fresh flat folder holding copies of our collected tiles (``use/*.jpeg``,
  byte-identical to the central images, EXIF included), because it writes caches and plots into
  its input: wall, CPU, peak memory, and its positions (``OUT/OFMTileConfiguration.txt``);
* **registration accuracy** of both against the truth: tile corners minus true corners, after
  removing one global offset (the median over textured tiles, per axis); median and max distance
  over textured tiles, blank-glass tiles listed separately; the stage positions alone as baseline;
* a **scaling** run (several grid sizes at a reduced tile size) with time and peak memory of both
  tools, drawn as ``scaling.png``;
* **memory against scan length**: our stitch alone on scans 20 tiles wide of the main tile size
  (central planes only) and of different lengths (full preset: 20x3 and 20x10), peak RSS of each;
* the two **JPEG decoders** on the same tiles, alternating on one thread (ms per tile);
* the **all-in-focus** cost: ``ofm_tiling.allinfocus.edf_from_paths`` on a few 9-plane positions of the
  main scan (seconds per position).

Every measured thing runs in its own child process; wall time is measured around it, CPU time
and peak RSS come from ``os.wait4`` (the child and everything it waited for), and the peak of the
summed RSS of the process tree is also sampled with psutil when it is installed. The 1-minute load
average is recorded before each measurement (the machine may be shared).

Scans are generated with ``ofm_tiling.synthetic.make_scan`` (procedural H&E-like texture, v2
metadata, stage error up to 25 px, a couple of blank-glass tiles) into ``benchmarks/cache/`` and
reused by later runs. Run folders go to ``benchmarks/work/``. Both are git-ignored.

Usage::

    python benchmarks/run.py                    # full: 10x10 positions x 9 planes of 3280x2464,
                                                # scaling 4x4, 8x8, 16x16 of 820x616; writes
                                                # BENCHMARKS.md, benchmarks/results.json and
                                                # benchmarks/scaling.png (~30-60 min on 2 cores)
    python benchmarks/run.py --preset small     # 4x4 of 1640x1232, a few minutes
    python benchmarks/run.py --preset tiny --no-ofs --work /tmp/w --cache /tmp/c   # smoke test
    python benchmarks/run.py --grid 6x5 --tile 1640x1232 --planes 9 --no-scaling

Options: ``--grid CxR --tile WxH --planes N --blank N`` (main scan), ``--scaling 4x4,8x8``
and ``--scaling-tile WxH`` (``--no-scaling`` to skip), ``--no-ofs``, ``--no-edf``, ``--no-memory``
(also skipped with ``--grid`` or ``--tile``), ``--repeat N``
(repeats of our stitch and of the floor; the best is reported, all are kept),
``--workers N`` (default 2), ``--ofs-timeout S``, ``--cache DIR``, ``--work DIR``, and
``--results``, ``--markdown``, ``--plot`` for the output files (by default only the full preset
writes the committed ``BENCHMARKS.md``, ``benchmarks/results.json`` and ``benchmarks/scaling.png``;
other presets write into the work folder). A hand-written section of ``BENCHMARKS.md`` between
``<!-- notes:begin -->`` and ``<!-- notes:end -->`` is kept when the file is regenerated.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULT_PREFIX = "BENCH-RESULT "
OFS_VERSION = "0.3.1"
OFS_PACKAGES = [f"openflexure-stitching=={OFS_VERSION}", "pyvips-binary"]

PRESETS = {
    "full": dict(grid=(10, 10), tile=(3280, 2464), planes=9, blank=2, scaling=[(4, 4), (8, 8), (16, 16)],
                 scaling_tile=(820, 616), scaling_planes=3, edf_positions=3, repeat=2, memory=[(20, 3), (20, 10)]),
    "small": dict(grid=(4, 4), tile=(1640, 1232), planes=9, blank=1, scaling=[(3, 3), (4, 4), (6, 6)],
                  scaling_tile=(410, 308), scaling_planes=3, edf_positions=2, repeat=1, memory=[(6, 3), (6, 8)]),
    "tiny": dict(grid=(2, 2), tile=(320, 240), planes=3, blank=0, scaling=[], scaling_tile=(160, 120),
                 scaling_planes=1, edf_positions=1, repeat=1, memory=[]),
}
STAGE_ERROR_PX = 25.0
OVERLAP = 0.3
SEED = 0


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def _pair(text: str) -> tuple[int, int]:
    a, b = text.lower().split("x")
    return int(a), int(b)


def _fmt_pair(p) -> str:
    return f"{p[0]}x{p[1]}"


class Scrubber:
    """Replace this machine's absolute paths in text that goes into committed files."""

    def __init__(self, pairs: list[tuple[Path, str]]):
        items = []
        for path, label in pairs:
            for variant in {str(path), str(Path(path).resolve())}:
                items.append((variant, label))
        items.append((str(Path.home()), "~"))
        self.items = sorted(items, key=lambda kv: -len(kv[0]))

    def __call__(self, obj):
        if isinstance(obj, str):
            for old, new in self.items:
                obj = obj.replace(old, new)
            return obj
        if isinstance(obj, dict):
            return {k: self(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self(v) for v in obj]
        return obj


def blank_indices(grid: tuple[int, int], count: int) -> list[int]:
    """Scan-order (raster) indices of `count` interior positions to show blank glass."""
    cols, rows = grid
    spots = [(0.4, 0.35), (0.6, 0.65), (0.25, 0.75)]
    out = []
    for fx, fy in spots[:count]:
        c, r = round(fx * (cols - 1)), round(fy * (rows - 1))
        out.append(r * cols + c)
    return sorted(set(out))


def machine_info() -> dict:
    import numpy
    import PIL
    from PIL import features

    info = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": numpy.__version__, "pillow": PIL.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo")}
    for mod in ("scipy", "tifffile", "imagecodecs", "ofm_tiling"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - informative only
            info[mod] = None
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kb = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal")))
        info["memory_gib"] = round(kb / 1024 ** 2, 1)
    except (OSError, StopIteration, ValueError):
        info["memory_gib"] = None
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        info["cpu"] = model
    except (OSError, StopIteration):
        info["cpu"] = None
    return info


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ----------------------------------------------------------------------------------------------
# Scans
# ----------------------------------------------------------------------------------------------

def scan_name(grid, tile, planes, blank) -> str:
    return f"scan-{_fmt_pair(grid)}-{_fmt_pair(tile)}-z{planes}-e{STAGE_ERROR_PX:g}-b{blank}-s{SEED}"


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


# ----------------------------------------------------------------------------------------------
# Measuring a child process
# ----------------------------------------------------------------------------------------------

def _tree_rss(proc) -> int:
    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except Exception:  # noqa: BLE001 - the process may be gone
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001
            pass
    return total


def measure(cmd: list[str], *, log_path: Path, cwd: Path | None = None, timeout: float | None = None,
            env: dict | None = None) -> dict:
    """Run `cmd` in its own process group; wall, CPU, peak RSS and the child's result line."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load = loadavg()
    with open(log_path, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                start_new_session=True)
        peak = [0]
        done = threading.Event()

        def sample():
            try:
                import psutil
                p = psutil.Process(proc.pid)
            except Exception:  # noqa: BLE001 - psutil is optional
                return
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(p))
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = [False]

        def kill():
            timed_out[0] = True
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if timer:
            timer.cancel()
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text(errors="replace")
    result = None
    for line in text.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    rec = {"wall_s": round(wall, 3), "user_s": round(ru.ru_utime, 3), "sys_s": round(ru.ru_stime, 3),
           "cpu_s": round(ru.ru_utime + ru.ru_stime, 3), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
           "tree_peak_rss_mb": round(peak[0] / 2 ** 20, 1) if peak[0] else None,
           "returncode": proc.returncode, "timed_out": timed_out[0], "load_before": load,
           "load_after": loadavg(), "result": result}
    if proc.returncode != 0:
        rec["error_tail"] = "\n".join(text.strip().splitlines()[-25:])
    return rec


def child(task: str, args: dict, *, log_path: Path, timeout: float | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", task, json.dumps(args)]
    log(f"  {task} ...")
    rec = measure(cmd, log_path=log_path, timeout=timeout)
    if rec["returncode"] != 0:
        log(f"  {task} FAILED (exit {rec['returncode']}); see {log_path}")
    else:
        log(f"  {task}: {rec['wall_s']:.2f} s wall, {rec['cpu_s']:.2f} s CPU, {rec['peak_rss_mb']:.0f} MB")
    return rec


# ----------------------------------------------------------------------------------------------
# Child tasks (run in their own process)
# ----------------------------------------------------------------------------------------------

def _emit(obj: dict) -> None:
    print(RESULT_PREFIX + json.dumps(obj), flush=True)


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


TASKS = {"startup": task_startup, "index": task_index, "collect": task_collect, "register": task_register, "fuse": task_fuse,
         "stitch": task_stitch, "floor": task_floor, "edf": task_edf, "decoders": task_decoders}


# ----------------------------------------------------------------------------------------------
# openflexure-stitching
# ----------------------------------------------------------------------------------------------

def ensure_ofs_venv(venv: Path) -> Path:
    exe = venv / "bin" / "openflexure-stitch"
    if exe.exists():
        return exe
    log(f"creating {venv.name} with {' '.join(OFS_PACKAGES)} (once)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *OFS_PACKAGES], check=True)
    return exe


def ofs_versions(venv: Path) -> dict:
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "['openflexure-stitching', 'pyvips', 'pyvips-binary', 'numpy', 'scipy', 'pillow']}))")
    try:
        out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)
    except (subprocess.CalledProcessError, json.JSONDecodeError, OSError) as exc:
        return {"error": str(exc)}


def run_ofs(exe: Path, use: Path, run_dir: Path, *, timeout: float) -> dict:
    """Copy the collected tiles into a fresh flat folder and run openflexure-stitch on it."""
    shutil.rmtree(run_dir, ignore_errors=True)
    tiles = run_dir / "tiles"
    tiles.mkdir(parents=True)
    for p in sorted(use.glob("*.jpeg")):
        shutil.copyfile(p, tiles / p.name)
    out = run_dir / "out"
    cmd = [str(exe), str(tiles), "-o", str(out), "--stitch_tiff"]
    log("  openflexure-stitch ...")
    rec = measure(cmd, log_path=run_dir / "ofs.log", timeout=timeout)
    rec["command"] = "openflexure-stitch tiles -o out --stitch_tiff"
    rec["outputs"] = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    rec["input_folder_after"] = sorted(p.name for p in tiles.iterdir() if not p.name.endswith(".jpeg"))
    tiffs = [p for p in out.glob("*.tif*")] if out.is_dir() else []
    rec["tiff_bytes"] = tiffs[0].stat().st_size if tiffs else None
    config = out / "OFMTileConfiguration.txt"
    if config.is_file():
        from ofm_tiling.tileconfig import read_tile_configuration

        names, pos = read_tile_configuration(config)
        rec["positions"] = {n: [float(x), float(y)] for n, (x, y) in zip(names, pos)}
    text = (run_dir / "ofs.log").read_text(errors="replace")
    rec["log_tail"] = "\n".join(text.strip().splitlines()[-12:])
    if rec["returncode"] == 0:
        log(f"  openflexure-stitch: {rec['wall_s']:.1f} s wall, {rec['cpu_s']:.1f} s CPU, "
            f"{rec['peak_rss_mb']:.0f} MB")
    else:
        log(f"  openflexure-stitch FAILED (exit {rec['returncode']}); see {run_dir / 'ofs.log'}")
    return rec


# ----------------------------------------------------------------------------------------------
# Accuracy against the truth
# ----------------------------------------------------------------------------------------------

def tile_folders(use: Path) -> dict[str, str]:
    with open(use / "tiles.csv", newline="", encoding="utf-8") as f:
        return {row["tile"]: row["position_folder"] for row in csv.DictReader(f)}


def accuracy(positions: dict[str, list[float]], use: Path, truth) -> dict:
    """Distance of each tile to its true corner after removing one global offset."""
    import numpy as np

    folders = tile_folders(use)
    by_folder = {p.folder: p for p in truth.positions}
    names = [n for n in positions if n in folders and folders[n] in by_folder]
    if not names:
        return {"error": "no tile matched the truth"}
    est = np.array([positions[n] for n in names], float)
    true = np.array([by_folder[folders[n]].true_xy for n in names], float)
    blank = np.array([bool(by_folder[folders[n]].blank) for n in names])
    diff = est - true
    ref = diff[~blank] if (~blank).any() else diff
    offset = np.median(ref, axis=0)
    err = np.linalg.norm(diff - offset, axis=1)
    tex = err[~blank]
    return {"textured_median_px": round(float(np.median(tex)), 3), "textured_mean_px": round(float(tex.mean()), 3),
            "textured_max_px": round(float(tex.max()), 3), "textured_n": int(len(tex)),
            "textured_over_5px": int((tex > 5).sum()),
            "blank_px": {names[i]: round(float(err[i]), 2) for i in np.flatnonzero(blank)},
            "worst_tile": names[int(np.argmax(np.where(blank, -1, err)))],
            "offset_px": [round(float(v), 2) for v in offset], "matched": len(names)}


def read_positions(path: Path) -> dict[str, list[float]]:
    from ofm_tiling.tileconfig import read_tile_configuration

    names, pos = read_tile_configuration(path)
    return {n: [float(x), float(y)] for n, (x, y) in zip(names, pos)}


# ----------------------------------------------------------------------------------------------
# One scan: our pipeline, the floor and openflexure-stitching
# ----------------------------------------------------------------------------------------------

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

    # Our stitch, as a whole (repeated; the best wall time is the headline).
    runs = []
    for k in range(repeat):
        run = work / f"stitch-{k}"
        shutil.rmtree(run, ignore_errors=True)
        runs.append(child("stitch", {"scan": str(scan), "out": str(run / "stitched"), "use": str(run / "use"),
                                     "workers": workers}, log_path=run.with_suffix(".log")))
    res["stitch_runs"] = runs
    res["stitch"] = best(runs)
    use = work / f"stitch-{runs.index(res['stitch'])}" / "use"
    ok = res["stitch"]["returncode"] == 0
    if ok:
        res["accuracy_ours"] = accuracy(read_positions(use / "TileConfiguration.registered.txt"), use, truth)
        res["accuracy_stage"] = accuracy(read_positions(use / "TileConfiguration.txt"), use, truth)
    elif (use / "TileConfiguration.txt").is_file():
        res["accuracy_stage"] = accuracy(read_positions(use / "TileConfiguration.txt"), use, truth)

    if stages:
        res["startup"] = child("startup", {"repeat": 7}, log_path=work / "startup.log")
        s: dict = {}
        s["index"] = child("index", {"scan": str(scan)}, log_path=work / "index.log")
        cuse = work / "collect" / "use"
        shutil.rmtree(cuse.parent, ignore_errors=True)
        s["collect"] = child("collect", {"scan": str(scan), "use": str(cuse)}, log_path=work / "collect.log")
        if s["collect"]["returncode"] == 0:
            reg_pos = work / "registered.json"
            s["register"] = child("register", {"use": str(cuse), "workers": workers, "positions_out": str(reg_pos)},
                                  log_path=work / "register.log")
            if s["register"]["returncode"] == 0:
                shutil.rmtree(work / "fuse", ignore_errors=True)
                s["fuse"] = child("fuse", {"use": str(cuse), "positions": str(reg_pos), "out": str(work / "fuse"),
                                           "workers": workers}, log_path=work / "fuse.log")
        res["stages"] = s

    if floor and ok:
        shape = res["stitch"]["result"]["mosaic_shape"]
        fl = []
        for k in range(repeat):
            shutil.rmtree(work / "floor", ignore_errors=True)
            fl.append(child("floor", {"use": str(use), "shape": shape, "out": str(work / "floor"), "workers": workers},
                            log_path=work / f"floor-{k}.log"))
        res["decoders"] = child("decoders", {"use": str(use)}, log_path=work / "decoders.log")
        res["floor_runs"] = fl
        res["floor"] = min((r for r in fl if r["returncode"] == 0), key=lambda r: r["result"]["floor_s"],
                           default=fl[-1])
        shutil.rmtree(work / "floor", ignore_errors=True)

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


# ----------------------------------------------------------------------------------------------
# Plot (Pillow only, so the benchmark needs nothing beyond the project's dependencies)
# ----------------------------------------------------------------------------------------------

def _nice_ticks(vmax: float, n: int = 5) -> list[float]:
    import math

    if vmax <= 0:
        return [0, 1]
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(vmax / step)) + 1)]


def draw_scaling(path: Path, rows: list[dict], title: str) -> None:
    from PIL import Image, ImageDraw, ImageFont

    W, H = 1400, 560
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=16)
        small = ImageFont.load_default(size=13)
    except TypeError:
        font = small = ImageFont.load_default()
    d.text((20, 10), title, fill="black", font=font)
    series_t = [("ofm-tiling stitch (total)", "#1f77b4", lambda r: r.get("ours_wall_s")),
                ("  registration", "#2ca02c", lambda r: r.get("ours_registration_s")),
                ("  fusion + OME-TIFF", "#9467bd", lambda r: r.get("ours_fusion_s")),
                ("openflexure-stitching 0.3.1", "#d62728", lambda r: r.get("ofs_wall_s"))]
    series_m = [("ofm-tiling stitch", "#1f77b4", lambda r: r.get("ours_rss_mb")),
                ("openflexure-stitching 0.3.1", "#d62728", lambda r: r.get("ofs_rss_mb"))]
    xs = [r["tiles"] for r in rows]
    for k, (series, ylabel) in enumerate([(series_t, "wall time (s)"), (series_m, "peak RSS (MB)")]):
        x0, y0, x1, y1 = 90 + k * 690, 60, 90 + k * 690 + 560, H - 70
        vals = [f(r) for _, _, f in series for r in rows if f(r) is not None]
        yt = _nice_ticks(max(vals) if vals else 1)
        xt = _nice_ticks(max(xs) if xs else 1)
        ymax, xmax = yt[-1], xt[-1]

        def px(x, y):
            return x0 + (x1 - x0) * x / xmax, y1 - (y1 - y0) * y / ymax

        for t in yt:
            _, yy = px(0, t)
            d.line([(x0, yy), (x1, yy)], fill="#e6e6e6")
            d.text((x0 - 8, yy), f"{t:g}", fill="black", font=small, anchor="rm")
        for t in xt:
            xx, _ = px(t, 0)
            d.line([(xx, y1), (xx, y1 + 5)], fill="black")
            d.text((xx, y1 + 8), f"{t:g}", fill="black", font=small, anchor="mt")
        d.rectangle([x0, y0, x1, y1], outline="black")
        d.text(((x0 + x1) / 2, y1 + 30), "tiles (positions)", fill="black", font=font, anchor="mt")
        d.text((x0 - 60, y0 - 25), ylabel, fill="black", font=font)
        for i, (label, colour, f) in enumerate(series):
            pts = [px(r["tiles"], f(r)) for r in rows if f(r) is not None]
            if len(pts) > 1:
                d.line(pts, fill=colour, width=3)
            for x, y in pts:
                d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour)
            ly = y0 + 12 + 22 * i
            d.line([(x0 + 15, ly), (x0 + 45, ly)], fill=colour, width=3)
            d.text((x0 + 52, ly), label, fill="black", font=small, anchor="lm")
    img.save(path)


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def _f(v, nd=1, unit=""):
    if v is None:
        return "–"
    return f"{v:.{nd}f}{unit}"


def _row(name, rec, inner=None, note=""):
    if rec is None:
        return f"| {name} | – | – | – | – | {note} |"
    if rec.get("returncode", 0) != 0:
        return f"| {name} | failed | | | | {note} (exit {rec.get('returncode')}) |"
    load = rec.get("load_before") or [None]
    wall = f"{rec['wall_s']:.1f}"
    if inner is not None:
        wall += f" ({inner:.3f} in-process)" if inner < 1 else (f" ({inner:.2f} in-process)" if inner < 10 else f" ({inner:.1f} in-process)")
    return (f"| {name} | {wall} | {rec['cpu_s']:.1f} | {rec['peak_rss_mb']:.0f} | {_f(load[0], 2)} | {note} |")


def summarise(res: dict) -> dict:
    """Headline figures and targets from one main-scan result."""
    out: dict = {}
    st = res.get("stitch") or {}
    if st.get("returncode") == 0:
        t = st["result"]["timings"]
        out["ours_wall_s"] = st["wall_s"]
        out["ours_in_process_s"] = st["result"]["in_process_s"]
        out["ours_reg_plus_fusion_s"] = t["registration"] + t["fusion"]
        out["ours_cpu_s"] = st["cpu_s"]
        out["ours_rss_mb"] = st["peak_rss_mb"]
        out["focus_check_share"] = t.get("focus check", 0.0) / out["ours_in_process_s"]
    fl = res.get("floor") or {}
    if fl.get("returncode") == 0 and "ours_wall_s" in out:
        out["floor_s"] = fl["result"]["floor_s"]
        out["floor_wall_s"] = fl["wall_s"]
        out["ratio_command_to_floor"] = out["ours_wall_s"] / out["floor_wall_s"]
        out["ratio_total_to_floor"] = out["ours_in_process_s"] / out["floor_s"]
        out["ratio_reg_fusion_to_floor"] = out["ours_reg_plus_fusion_s"] / out["floor_s"]
    su = res.get("startup") or {}
    if su.get("returncode") == 0:
        out["help_s"] = su["result"]["help_s"]
    ofs = res.get("ofs") or {}
    if ofs.get("returncode") == 0 and "ours_wall_s" in out:
        out["ofs_wall_s"] = ofs["wall_s"]
        out["ofs_over_ours"] = ofs["wall_s"] / out["ours_wall_s"]
        out["ours_over_ofs"] = out["ours_wall_s"] / ofs["wall_s"]
    idx = (res.get("stages") or {}).get("index") or {}
    if idx.get("returncode") == 0:
        out["index_warm_s"] = idx["result"]["warm_s"]
    return out


def write_markdown(path: Path, results: dict, plot_rel: str | None) -> None:
    main = results["main"]
    s = results["summary"]
    m = results["machine"]
    lines = ["# Benchmarks", "",
             "Generated by `benchmarks/run.py` (its docstring says exactly what is measured). "
             f"Run started {results['started']} (UTC), preset `{results['preset']}`, "
             f"{results['workers']} worker threads. All figures below come from this one run, measured side by side.", ""]
    g, ts = main["grid"], main["tile_size"]
    lines += [f"**Main scan**: {g[0]}×{g[1]} positions × {main['planes']} planes of {ts[0]}×{ts[1]} JPEGs "
              f"(procedural H&E-like texture, OFM v2 metadata, overlap {main['overlap']:g}, stage error up to "
              f"±{main['stage_error_px']:g} px per axis, {len(main['blank_positions'])} blank-glass positions), "
              f"{main['positions'] * main['planes']} images.", ""]

    st = main.get("stitch") or {}
    stages = main.get("stages") or {}
    fl = main.get("floor")
    ofs = main.get("ofs")
    lines += ["## Time and memory", "",
              "Each row is its own process. Wall = around the process (Python start and imports included); "
              "in-process = the measured function alone. Peak RSS = the process's maximum resident memory.", "",
              "| what | wall s | CPU s (user+sys) | peak RSS MB | load (1 min) before | notes |",
              "|---|---|---|---|---|---|"]
    if st.get("returncode") == 0:
        r = st["result"]
        t = r["timings"]
        ms = r["mosaic_shape"]
        parts = ", ".join(f"{'fusion + writing' if k == 'fusion' else k} {v:.2f} s" for k, v in t.items())
        lines.append(_row("**ofm-tiling stitch** (whole command)", st, r["in_process_s"],
                          f"{parts}; mosaic {ms[1]}×{ms[0]} px, {r['mosaic_bytes'] / 2**20:.0f} MiB"))
    else:
        lines.append(_row("**ofm-tiling stitch**", st or None))
    if stages:
        idx = stages.get("index")
        if idx and idx.get("returncode") == 0:
            ir = idx["result"]
            lines.append(_row("collect: indexing only", idx, ir["warm_s"],
                              f"{ir['positions']} positions, {ir['images']} JPEG headers; warm median of 3, "
                              f"first {ir['first_s']:.2f} s"))
        col = stages.get("collect")
        if col and col.get("returncode") == 0:
            cr = col["result"]
            copy = cr["collect_s"] - (idx["result"]["warm_s"] if idx and idx.get("returncode") == 0 else 0)
            lines.append(_row("collect: full (index + copy)", col, cr["collect_s"],
                              f"copying {cr['tiles']} tiles, {cr['bytes'] / 2**20:.0f} MiB ≈ {copy:.2f} s"))
        reg = stages.get("register")
        if reg:
            note = ""
            if reg.get("returncode") == 0:
                rr = reg["result"]
                note = (f"registration {rr['register_s']:.1f} s + solve {rr['solve_s']:.2f} s; "
                        f"{rr['accepted']}/{rr['links']} links accepted")
            lines.append(_row("registration + global solve", reg, reg["result"]["total_s"] if reg.get("result") else None, note))
        fu = stages.get("fuse")
        if fu:
            lines.append(_row("fusion + pyramidal OME-TIFF", fu,
                              fu["result"]["fuse_write_s"] if fu.get("result") else None,
                              "feathered, streamed; JPEG q90 tiles, full pyramid, preview"))
    if fl:
        if fl.get("returncode") == 0:
            fr = fl["result"]
            lines.append(_row("**floor**: decode all tiles + write same-size OME-TIFF", fl, fr["floor_s"],
                              f"decode {fr['tiles']} tiles {fr['decode_s']:.1f} s + encode {fr['encode_s']:.1f} s"))
        else:
            lines.append(_row("floor", fl))
    if ofs:
        note = "`--stitch_tiff`, defaults otherwise"
        if ofs.get("returncode") == 0 and ofs.get("tiff_bytes"):
            note += f"; TIFF {ofs['tiff_bytes'] / 2**20:.0f} MiB"
        lines.append(_row("**openflexure-stitching 0.3.1**", ofs, None, note))
    lines.append("")
    lines += ["### Ratios (same run)", "", "| ratio | value |", "|---|---|"]
    if "ratio_command_to_floor" in s:
        lines.append(f"| **whole `ofm-tiling stitch` command ÷ floor** (process wall ÷ process wall) | "
                     f"**{s['ratio_command_to_floor']:.2f}×** |")
    if "ratio_total_to_floor" in s:
        lines.append(f"| ofm-tiling stitch (in-process, all stages) ÷ floor (in-process) | {s['ratio_total_to_floor']:.2f}× |")
        lines.append(f"| registration + fusion/writing ÷ floor | {s['ratio_reg_fusion_to_floor']:.2f}× |")
    if "focus_check_share" in s:
        lines.append(f"| focus check ÷ whole stitch (in-process) | {100 * s['focus_check_share']:.1f} % |")
    if "help_s" in s:
        lines.append(f"| `ofm-tiling --help` start-up (fresh process, median of 7) | {s['help_s']:.3f} s |")
    if "ofs_over_ours" in s:
        lines.append(f"| openflexure-stitching wall ÷ ofm-tiling wall (speed-up) | **{s['ofs_over_ours']:.1f}×** |")
        lines.append(f"| ofm-tiling wall ÷ openflexure-stitching wall | {s['ours_over_ofs']:.3f} |")
    if st.get("returncode") == 0 and ofs and ofs.get("returncode") == 0:
        lines.append(f"| openflexure-stitching CPU ÷ ofm-tiling CPU | {ofs['cpu_s'] / st['cpu_s']:.1f}× |")
        lines.append(f"| openflexure-stitching peak RSS ÷ ofm-tiling peak RSS | {ofs['peak_rss_mb'] / st['peak_rss_mb']:.1f}× |")
    lines.append("")

    lines += ["## Registration accuracy", "",
              "Distance between each tile's corner and its true corner, after removing one global offset "
              "(median of the textured tiles' differences, per axis). The textured columns count textured tiles only; "
              "blank-glass tiles are listed separately (nothing to register there: where they land depends on the "
              "tool's model of the stage).", "",
              "| positions from | textured median px | textured mean px | textured max px | textured tiles > 5 px | blank tiles px |",
              "|---|---|---|---|---|---|"]
    for label, acc in [("stage only (collect's TileConfiguration.txt)", main.get("accuracy_stage")),
                       ("**ofm-tiling** (TileConfiguration.registered.txt)", main.get("accuracy_ours")),
                       ("**openflexure-stitching** (OFMTileConfiguration.txt)", (ofs or {}).get("accuracy"))]:
        if not acc or "error" in acc:
            lines.append(f"| {label} | – | – | – | – | {acc.get('error') if acc else 'not available'} |")
            continue
        blank = ", ".join(f"{k}: {v:.1f}" for k, v in acc["blank_px"].items()) or "–"
        lines.append(f"| {label} | {acc['textured_median_px']:.2f} | {acc['textured_mean_px']:.2f} | "
                     f"{acc['textured_max_px']:.2f} | {acc['textured_over_5px']} of {acc['textured_n']} | {blank} |")
    lines.append("")
    if ofs and ofs.get("returncode") != 0:
        lines += ["openflexure-stitching failed on this data:", "", "```", ofs.get("error_tail", ""), "```", ""]

    edf = main.get("edf")
    if edf:
        lines += ["## All-in-focus fusion", ""]
        if edf.get("returncode") == 0:
            er = edf["result"]
            per = ", ".join(f"{t:.2f}" for t in er["per_position_s"])
            lines += [f"`ofm_tiling.allinfocus.edf_from_paths` on {len(er['per_position_s'])} positions of "
                      f"{er['planes']} planes of {er['shape'][1]}×{er['shape'][0]} ({results['workers']} workers): "
                      f"**{er['mean_s']:.2f} s per position** (each: {per} s); process peak RSS "
                      f"{edf['peak_rss_mb']:.0f} MB, load before {_f((edf.get('load_before') or [None])[0], 2)}.", ""]
        else:
            lines += ["failed:", "", "```", edf.get("error_tail", ""), "```", ""]

    sc = results.get("scaling") or []
    if sc:
        lines += ["## Scaling", "",
                  f"Grids of {_fmt_pair(results['scaling_tile'])} tiles, {results['scaling_planes']} planes per position "
                  "(only the central plane is stitched), same generator settings. Wall and peak RSS of each tool's whole run.",
                  ""]
        if plot_rel:
            lines += [f"![scaling]({plot_rel})", ""]
        lines += ["| grid | tiles | mosaic Mpx | ofm-tiling wall s | registration s | fusion s | CPU s | peak RSS MB | "
                  "OFS wall s | OFS peak RSS MB | OFS ÷ ours | ours textured max err px | OFS textured max err px | load before |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sc:
            lines.append(f"| {r['grid']} | {r['tiles']} | {_f(r.get('mosaic_mpx'), 0)} | {_f(r.get('ours_wall_s'))} | "
                         f"{_f(r.get('ours_registration_s'))} | {_f(r.get('ours_fusion_s'))} | {_f(r.get('ours_cpu_s'))} | "
                         f"{_f(r.get('ours_rss_mb'), 0)} | {_f(r.get('ofs_wall_s'))} | {_f(r.get('ofs_rss_mb'), 0)} | "
                         f"{_f(r.get('ofs_over_ours'), 1, '×')} | {_f(r.get('ours_max_err_px'), 2)} | "
                         f"{_f(r.get('ofs_max_err_px'), 2)} | {_f(r.get('load'), 2)} |")
        lines.append("")

    mem = results.get("memory") or []
    if mem:
        lines += ["## Memory against scan length", "",
                  f"Scans of the main scan's tile size ({_fmt_pair(main['tile_size'])}), central planes only, as wide as "
                  "a large slide scan and of different lengths: peak RSS of the whole `ofm-tiling stitch` process. "
                  "Fusion streams the mosaic band by band, so memory follows the scan's width, not its length.", "",
                  "| grid | tiles | mosaic px | mosaic MiB (RGB) | wall s | peak RSS MB | textured max err px | load before |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in mem:
            if r.get("returncode") != 0:
                lines.append(f"| {r['grid']} | {r['tiles']} | failed | | | | | |")
                continue
            lines.append(f"| {r['grid']} | {r['tiles']} | {r['mosaic'][1]}×{r['mosaic'][0]} | {r['mosaic_mb']:.0f} | "
                         f"{r['wall_s']:.1f} | {r['rss_mb']:.0f} | {_f(r.get('max_err_px'), 2)} | {_f(r.get('load'), 2)} |")
        lines.append("")

    dec = (main.get("decoders") or {})
    if dec.get("returncode") == 0:
        d = dec["result"]
        lines += ["## Decoding a tile", "",
                  f"Full-resolution RGB decode of {d['tiles']} of the main scan's tiles, one thread, the two decoders "
                  f"alternating: **{d['imagecodecs']:.1f} ms** per tile with libjpeg-turbo through imagecodecs straight "
                  f"into numpy (`ofm_tiling.imageio.read_rgb`, used by the fusion and the floor) against "
                  f"{d['pillow']:.1f} ms with Pillow and `numpy.asarray` ({d['pillow'] / d['imagecodecs']:.1f}×).", ""]

    lines += ["## Targets", "", "| target (issue) | measured | met |", "|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['measured']} | {t['met']} |")
    lines.append("")

    lines += ["## Machine", "",
              f"- {m.get('cores')} cores ({m.get('cpu') or 'unknown CPU'}), {m.get('memory_gib')} GiB memory, {m.get('platform')}",
              f"- load average (1, 5, 15 min): {results['load_start']} at the start, {results['load_end']} at the end "
              "(the machine is shared; other processes take part of the 2 cores during some measurements: see "
              "the per-row load)",
              f"- Python {m.get('python')}, numpy {m.get('numpy')}, Pillow {m.get('pillow')} (libjpeg-turbo "
              f"{m.get('libjpeg_turbo')}), scipy {m.get('scipy')}, tifffile {m.get('tifffile')}, imagecodecs "
              f"{m.get('imagecodecs')}, ofm-tiling {m.get('ofm_tiling')}"]
    if results.get("ofs_versions"):
        v = results["ofs_versions"]
        lines.append("- openflexure-stitching environment: " + ", ".join(f"{k} {val}" for k, val in v.items()))
    lines.append("")
    lines += ["## Reproduce", "", "```bash", "pip install -e .",
              "python benchmarks/run.py            # creates benchmarks/.venv-ofs with: pip install "
              + " ".join(OFS_PACKAGES),
              "python benchmarks/run.py --preset small --no-scaling   # a few minutes",
              "```", "",
              f"This run: `{results['command']}`. Raw figures: `benchmarks/results.json`.", ""]
    notes = results.get("kept_notes")
    lines += ["## Notes", "", "<!-- notes:begin -->",
              notes.strip() if notes else "(write observations here; this section is kept when the file is regenerated)",
              "<!-- notes:end -->", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def kept_notes(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    a, b = text.find("<!-- notes:begin -->"), text.find("<!-- notes:end -->")
    if a < 0 or b < a:
        return None
    return text[a + len("<!-- notes:begin -->"):b].strip() or None


def targets(res: dict, s: dict, memory: list[dict] | None = None) -> list[dict]:
    out = []
    if "ratio_command_to_floor" in s:
        v = s["ratio_command_to_floor"]
        out.append({"target": "whole `ofm-tiling stitch` command (defaults, everything a user gets) ≤ 2.0× the floor",
                    "measured": f"{v:.2f}×", "met": "yes" if v <= 2.0 else "no"})
    if "focus_check_share" in s:
        v = s["focus_check_share"]
        out.append({"target": "focus check ≤ 10 % of a default run", "measured": f"{100 * v:.1f} %",
                    "met": "yes" if v <= 0.10 else "no"})
    if "help_s" in s:
        v = s["help_s"]
        out.append({"target": "`ofm-tiling --help` under 0.3 s", "measured": f"{v:.3f} s",
                    "met": "yes" if v < 0.3 else "no"})
    if "ratio_reg_fusion_to_floor" in s:
        v = s["ratio_reg_fusion_to_floor"]
        out.append({"target": "registration + pyramidal OME-TIFF ≤ 2.5× the floor",
                    "measured": f"{v:.2f}× (whole stitch incl. collect: {s['ratio_total_to_floor']:.2f}×)",
                    "met": "yes" if v <= 2.5 else "no"})
    else:
        out.append({"target": "registration + pyramidal OME-TIFF ≤ 2.5× the floor", "measured": "not measured",
                    "met": "?"})
    if "ofs_over_ours" in s:
        v = s["ofs_over_ours"]
        out.append({"target": "≥ 10× faster than openflexure-stitching on the same tiles",
                    "measured": f"{v:.1f}× (wall)", "met": "yes" if v >= 10 else "no"})
    else:
        ofs = res.get("ofs")
        why = "openflexure-stitching not run" if not ofs else "openflexure-stitching failed"
        out.append({"target": "≥ 10× faster than openflexure-stitching on the same tiles", "measured": why, "met": "?"})
    mem = [r for r in (memory or []) if r.get("returncode") == 0]
    if mem:
        peak = max(r["rss_mb"] for r in mem)
        growth = max(r["rss_mb"] for r in mem) - min(r["rss_mb"] for r in mem)
        grown = max(r["mosaic_mb"] for r in mem) - min(r["mosaic_mb"] for r in mem)
        wide = max(int(r["grid"].split("x")[0]) for r in mem)
        out.append({"target": f"peak memory does not grow with the mosaic (by < 1/4 of what the mosaic grows); "
                              f"{wide} tiles wide within 2 GB",
                    "measured": f"{peak:.0f} MB at most; +{growth:.0f} MB for a mosaic {grown:.0f} MiB larger",
                    "met": "yes" if peak < 2048 and growth < 0.25 * grown else "no"})
    if "index_warm_s" in s:
        v = s["index_warm_s"]
        n = (res.get("stages") or {}).get("index", {}).get("result", {})
        out.append({"target": "collect indexing of 100 positions × 9 images well under 1 s (warm cache)",
                    "measured": f"{v:.3f} s for {n.get('positions')} × {n.get('images', 0) // max(n.get('positions', 1), 1)}",
                    "met": "yes" if v < 0.5 else ("borderline" if v < 1 else "no")})
    return out


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark ofm-tiling against the floor and openflexure-stitching "
                                            "(see the module docstring).")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--grid", type=_pair, help="main scan positions COLSxROWS")
    p.add_argument("--tile", type=_pair, help="main scan tile size WxH")
    p.add_argument("--planes", type=int, help="images per stack")
    p.add_argument("--blank", type=int, help="blank-glass positions (0-3)")
    p.add_argument("--scaling", help="comma-separated grids for the scaling run, e.g. 4x4,8x8,16x16")
    p.add_argument("--scaling-tile", type=_pair, help="tile size WxH of the scaling run")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--no-ofs", action="store_true", help="do not run openflexure-stitching")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs on long scans")
    p.add_argument("--no-edf", action="store_true")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage processes")
    p.add_argument("--repeat", type=int, help="repeats of our stitch and of the floor (best reported)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ofs-timeout", type=float, default=3 * 3600)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--venv", type=Path, default=HERE / ".venv-ofs")
    p.add_argument("--results", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--render-only", action="store_true",
                   help="only rewrite the Markdown report and the plot from an existing results file")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        result = TASKS[argv[1]](json.loads(argv[2]))
        _emit(result)
        return 0
    args = build_parser().parse_args(argv)
    pre = dict(PRESETS[args.preset])
    for key in ("grid", "tile", "planes", "blank", "repeat", "scaling_tile"):
        if getattr(args, key) is not None:
            pre[key] = getattr(args, key)
    if args.scaling:
        pre["scaling"] = [_pair(t) for t in args.scaling.split(",") if t.strip()]
    if args.no_scaling:
        pre["scaling"] = []
    if args.no_memory or args.grid is not None or args.tile is not None:
        pre["memory"] = []
    full = args.preset == "full" and args.grid is None and args.tile is None
    work = args.work / args.preset
    results_path = args.results or (HERE / "results.json" if full else work / "results.json")
    md_path = args.markdown or (REPO / "BENCHMARKS.md" if full else work / "BENCHMARKS.md")
    plot_path = args.plot or (HERE / "scaling.png" if full else work / "scaling.png")
    scrub = Scrubber([(REPO, "."), (args.work, "<work>"), (args.cache, "<cache>"), (Path(sys.prefix), "<python>")])

    if args.render_only:
        results = json.loads(results_path.read_text())
        results["summary"] = summarise(results["main"])
        results["targets"] = targets(results["main"], results["summary"], results.get("memory"))
        results["kept_notes"] = kept_notes(md_path)
        results_path.write_text(json.dumps({k: v for k, v in results.items() if k != "kept_notes"}, indent=1) + "\n")
        render(results, md_path, plot_path)
        return 0

    results: dict = {"preset": args.preset, "workers": args.workers,
                     "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                     "command": "python benchmarks/run.py " + " ".join(scrub(a) for a in argv),
                     "machine": machine_info(), "load_start": loadavg()}
    ofs_exe = None
    if not args.no_ofs:
        ofs_exe = ensure_ofs_venv(args.venv)
        results["ofs_versions"] = ofs_versions(args.venv)

    scan = ensure_scan(args.cache, pre["grid"], pre["tile"], pre["planes"], pre["blank"], args.workers)
    scaling_scans = [ensure_scan(args.cache, g, pre["scaling_tile"], pre["scaling_planes"], 0, args.workers)
                     for g in pre["scaling"]]

    results["main"] = bench_scan(scan, work / "main", workers=args.workers, repeat=pre["repeat"], stages=not args.no_stages,
                                 floor=True, ofs_exe=ofs_exe, ofs_timeout=args.ofs_timeout,
                                 edf_positions=0 if args.no_edf else pre["edf_positions"])
    rows = []
    for g, sscan in zip(pre["scaling"], scaling_scans):
        r = bench_scan(sscan, work / f"scaling-{_fmt_pair(g)}", workers=args.workers, repeat=1, stages=False,
                       floor=False, ofs_exe=ofs_exe, ofs_timeout=args.ofs_timeout, edf_positions=0)
        row = {"grid": _fmt_pair(g), "tiles": r["positions"], "load": (r["stitch"].get("load_before") or [None])[0]}
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
        rows.append(row)
    results["scaling"] = rows
    mem = []
    for g in pre["memory"]:  # the main scan's tile size, central planes only, no blank tiles
        mscan = ensure_scan(args.cache, g, pre["tile"], 1, 0, args.workers)
        r = bench_scan(mscan, work / f"memory-{_fmt_pair(g)}", workers=args.workers, repeat=1, stages=False,
                       floor=False, ofs_exe=None, ofs_timeout=args.ofs_timeout, edf_positions=0)
        st = r["stitch"]
        row = {"grid": _fmt_pair(g), "tiles": r["positions"], "returncode": st["returncode"],
               "load": (st.get("load_before") or [None])[0]}
        if st["returncode"] == 0:
            ms = st["result"]["mosaic_shape"]
            row.update(wall_s=st["wall_s"], rss_mb=st["peak_rss_mb"], mosaic=ms, mosaic_mb=3 * ms[0] * ms[1] / 2**20,
                       max_err_px=(r.get("accuracy_ours") or {}).get("textured_max_px"))
        mem.append(row)
    results["memory"] = mem
    results["scaling_tile"] = list(pre["scaling_tile"])
    results["scaling_planes"] = pre["scaling_planes"]
    results["summary"] = summarise(results["main"])
    results["targets"] = targets(results["main"], results["summary"], results["memory"])
    results["load_end"] = loadavg()
    results["kept_notes"] = kept_notes(md_path)

    results = scrub(results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps({k: v for k, v in results.items() if k != "kept_notes"}, indent=1) + "\n")
    render(results, md_path, plot_path)
    log(f"wrote {scrub(str(results_path))}, {scrub(str(md_path))}" + (f", {scrub(str(plot_path))}" if rows else ""))
    for t in results["targets"]:
        log(f"target: {t['target']}: {t['measured']} -> {t['met']}")
    return 0


def render(results: dict, md_path: Path, plot_path: Path) -> None:
    """Write the plot (when there is a scaling run) and the Markdown report."""
    rows = results.get("scaling") or []
    plot_rel = None
    if rows:
        draw_scaling(plot_path, rows, f"Scaling: grids of {_fmt_pair(results['scaling_tile'])} tiles, "
                                      f"{results['workers']} workers (ofm-tiling vs openflexure-stitching 0.3.1)")
        try:
            plot_rel = os.path.relpath(plot_path, md_path.parent)
        except ValueError:
            plot_rel = plot_path.name
    write_markdown(md_path, results, plot_rel)


if __name__ == "__main__":
    sys.exit(main())
