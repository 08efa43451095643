"""`make_scan`: write a synthetic scan of any kind with its ground truth.

The steps, in order: plan focus and geometry, build the canvas, plan every capture, write the
folders' documents, render and write the pixels, then the truth and the file times.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import OfmTilingError
from ..tileconfig import write_tile_configuration
from .capture import CapturePlan, plan_captures, plan_focus
from .geometry import Geometry, plan_geometry
from .ofm_metadata import STACK_DZ, iso, scan_doc
from .optics import default_defocus
from .spec import ScanSpec, spec_from
from .texture import make_canvas
from .tiles import Sensor, TileTask, write_pixels
from .truth import ScanTruth, jsonable

TRUTH_PNG_LIMIT = 100_000_000  # pixels; above this truth.png is not written
TILE_CONFIG = "TileConfiguration.txt"


def make_scan(out_dir: str | os.PathLike, spec: ScanSpec | None = None, /, *, workers: int = 1,
              overwrite: bool = False, progress: Callable[[int, int], None] | None = None,
              **fields: Any) -> ScanTruth:
    """Write a synthetic scan with its ground truth (``truth.json``, ``truth.png``).

    Parameters
    ----------
    out_dir : path
        Folder to create; must not exist or be empty.
    spec : ScanSpec, optional
        What to write; `fields` override it (``make_scan(d, **f) == make_scan(d, ScanSpec(**f))``).
    workers : int
        Processes writing positions in parallel (the result does not depend on it).
    overwrite : bool
        Replace `out_dir` when it holds an earlier synthetic scan.
    progress : callable, optional
        ``progress(done, total)`` called as positions are written.

    Returns
    -------
    ScanTruth
        Also written to ``out_dir/truth.json``.
    """
    spec = spec_from(spec, fields)
    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    out = Path(out_dir)
    rng, rnd = np.random.default_rng([spec.seed, 1]), random.Random(spec.seed)
    notes: list[str] = []
    h, w = spec.tile_shape
    focus = plan_focus(spec, spec.defocus_px if spec.defocus_px is not None else default_defocus(w), rnd)
    geo = plan_geometry(spec, focus.margin, rng, rnd)
    m = focus.margin
    glass = [(geo.true_xy[i, 0] - m, geo.true_xy[i, 1] - m, w + 2 * m, h + 2 * m) for i in spec.blank_tiles]
    canvas, source, source_info, canvas_um = make_canvas(
        spec.source, geo.canvas_hw, glass, zoom=spec.zoom, seed=spec.seed, notes=notes,
        nucleus_radius_px=spec.nucleus_radius_px or max(3.0, w / 100))
    plan = plan_captures(spec, geo, focus, rng, rnd)
    want_png = _want_truth_png(spec, geo.canvas_hw, notes)

    _prepare_out_dir(out, overwrite)
    config_origin = _write_documents(out, spec, geo, plan)
    camera = Sensor(tile_hw=spec.tile_shape, pixel_type=spec.pixel_type, tile_format=spec.tile_format,
                    noise_sigma=float(spec.noise_sigma))
    tasks = [_under(out, task) for task in plan.tasks]
    truth_canvas = write_pixels(canvas, tasks, geo.canvas_hw if want_png else None, camera=camera,
                                workers=workers, progress=progress)
    if truth_canvas is not None:
        Image.fromarray(truth_canvas).save(out / "truth.png", compress_level=1)
    truth = _truth(spec, geo, plan, focus.defocus_px, source=source, source_info=source_info, canvas_um=canvas_um,
                   truth_png=want_png, config_origin=config_origin, notes=notes)
    _write_json(out / "truth.json", truth.to_json())
    _set_mtimes({out / p: t for p, t in plan.file_times.items()}, scramble=spec.scramble_mtimes, rnd=rnd,
                after=plan.finished)
    return truth


def _want_truth_png(spec: ScanSpec, canvas_hw: tuple[int, int], notes: list[str]) -> bool:
    if spec.truth_png is not None:
        return spec.truth_png
    pixels = canvas_hw[0] * canvas_hw[1]
    if pixels <= TRUTH_PNG_LIMIT:
        return True
    notes.append(f"truth.png not written: the canvas is {pixels / 1e6:.0f} MP (> {TRUTH_PNG_LIMIT / 1e6:.0f} MP)")
    return False


def _under(out: Path, task: TileTask) -> TileTask:
    """The task with its paths inside `out`."""
    return replace(task, paths=[str(out / p) for p in task.paths])


def _write_documents(out: Path, spec: ScanSpec, geo: Geometry, plan: CapturePlan) -> tuple[float, float] | None:
    """data.json files (smart stacks) or TileConfiguration.txt (tileconfig; returns its origin on the canvas)."""
    if spec.kind == "smart-stack":
        h, w = spec.tile_shape
        settings = {"grid": {"x": spec.cols, "y": spec.rows}, "style": spec.style, "overlap": spec.overlap,
                    "stride_size": geo.stride, "stack": {"images": spec.stack, "dz": STACK_DZ},
                    "autofocus": {"dz": 2000}, "save_resolution": [w, h]}
        docs = {**plan.docs, "": scan_doc(dataset=plan.dataset, settings=settings, started=plan.started,
                                           finished=None if spec.incomplete else plan.finished, layout=spec.layout,
                                           planned=len(geo.order), completed=len(plan.positions))}
        plan.file_times["data.json"] = plan.finished
        for folder, doc in docs.items():
            (out / folder).mkdir(exist_ok=True)
            _write_json(out / folder / "data.json", doc)
        return None
    if spec.kind == "tileconfig":
        origin = np.floor(geo.nominal.min(axis=0))
        nominal = np.array([p.nominal_xy for p in plan.positions]) - origin
        write_tile_configuration(out / TILE_CONFIG, [p.files[0] for p in plan.positions], nominal)
        return float(origin[0]), float(origin[1])
    return None


def _truth(spec: ScanSpec, geo: Geometry, plan: CapturePlan, defocus_px: float, *, source: str,
           source_info: dict[str, Any], canvas_um: float | None, truth_png: bool,
           config_origin: tuple[float, float] | None, notes: list[str]) -> ScanTruth:
    return ScanTruth(
        kind=spec.kind, pixel_type=spec.pixel_type, tile_format=spec.tile_format, layout=spec.layout,
        usercomment_prefix=spec.usercomment_prefix, tile_shape=spec.tile_shape, grid=spec.grid,
        overlap=float(spec.overlap), planes=spec.stack, style=spec.style, stack_dz=STACK_DZ,
        stage_error_px=float(spec.stage_error_px), error_dist=spec.error_dist, subpixel=spec.subpixel,
        csm_matrix=geo.csm.tolist(), calibration_width=geo.calibration_hw[1],
        calibration_resolution=geo.calibration_hw, stage_zero_canvas_xy=geo.stage_zero_xy,
        pixel_size_um=spec.pixel_size_um, canvas_shape=geo.canvas_hw, canvas_pixel_size_um=canvas_um,
        truth_png="truth.png" if truth_png else None, source=source, source_info=source_info,
        defocus_px=defocus_px, tilt=float(spec.tilt), noise_sigma=float(spec.noise_sigma),
        jpeg_quality=int(spec.jpeg_quality), positions=plan.positions,
        failed_folder=plan.failed_info["folder"] if plan.failed_info else None, failed_info=plan.failed_info,
        seed=spec.seed, started=iso(plan.started), tile_config=TILE_CONFIG if config_origin else None,
        config_origin_xy=config_origin, notes=notes)


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OfmTilingError(out_dir, "exists and is not a folder")
        if any(out_dir.iterdir()):
            if not (overwrite and (out_dir / "truth.json").is_file()):
                raise OfmTilingError(out_dir, "folder exists and is not empty (only an earlier synthetic "
                                              "scan can be replaced, with overwrite=True)")
            shutil.rmtree(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OfmTilingError(out_dir, f"cannot create the folder ({exc.strerror or exc})") from None


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(jsonable(doc), indent=1) + "\n", encoding="utf-8")


def _set_mtimes(file_times: dict[Path, datetime], *, scramble: bool, rnd: random.Random, after: datetime) -> None:
    """Capture times as file times, or random ones as after a copy (folders included)."""
    if scramble:
        copied = after + timedelta(days=2)
        folders = {p.parent for p in file_times}
        for p in sorted(file_times) + sorted(folders):
            stamp = (copied + timedelta(seconds=rnd.uniform(0, 3600))).timestamp()
            os.utime(p, (stamp, stamp))
    else:
        for p, when in file_times.items():
            os.utime(p, (when.timestamp(), when.timestamp()))

