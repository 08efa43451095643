"""openflexure-stitching in its own virtual environment, and registration accuracy against the truth."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

from measure import log, measure

OFS_VERSION = "0.3.1"
OFS_PACKAGES = [f"openflexure-stitching=={OFS_VERSION}", "pyvips-binary"]


def ensure_ofs_venv(venv: Path) -> Path:
    """The openflexure-stitch executable, creating its virtual environment on first use."""
    exe = venv / "bin" / "openflexure-stitch"
    if exe.exists():
        return exe
    log(f"creating {venv.name} with {' '.join(OFS_PACKAGES)} (once)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *OFS_PACKAGES], check=True)
    return exe


def ofs_versions(venv: Path) -> dict:
    """Versions of the packages in the openflexure-stitching environment."""
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
        rec["positions"] = read_positions(config)
    text = (run_dir / "ofs.log").read_text(errors="replace")
    rec["log_tail"] = "\n".join(text.strip().splitlines()[-12:])
    if rec["returncode"] == 0:
        log(f"  openflexure-stitch: {rec['wall_s']:.1f} s wall, {rec['cpu_s']:.1f} s CPU, "
            f"{rec['peak_rss_mb']:.0f} MB")
    else:
        log(f"  openflexure-stitch FAILED (exit {rec['returncode']}); see {run_dir / 'ofs.log'}")
    return rec


# Accuracy against the truth (of our positions, the stage's and openflexure-stitching's)

def tile_folders(use: Path) -> dict[str, str]:
    """Tile name -> its position folder in the scan, from collect's ``use/tiles.csv``."""
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
    """Tile name -> [x, y] from an ImageJ tile configuration file."""
    from ofm_tiling.tileconfig import read_tile_configuration

    names, pos = read_tile_configuration(path)
    return {n: [float(x), float(y)] for n, (x, y) in zip(names, pos)}
