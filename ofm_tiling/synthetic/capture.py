"""The capture plan: what the microscope does at each position, in scan order, before any pixel is made.

Stage positions, autofocus z, capture times, file names, metadata and the tasks that render the
images; the random draws happen in one fixed order, so a seed always gives the same scan.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from .geometry import Geometry
from .ofm_metadata import (
    STACK_DZ,
    MetadataContext,
    failed_doc,
    image_exif,
    iso,
    position_doc,
    random_uuid,
    tagged_planes,
)
from .spec import ScanSpec
from .tiles import TileTask
from .truth import PositionTruth

DEFAULT_START = datetime(2024, 3, 14, 10, 30, 5, 123456)
FAILURE = "Autofocus failed: stage did not respond"
_EXTENSIONS = {"jpeg": "jpeg", "png": "png", "tiff": "tif"}


@dataclass(frozen=True)
class Focus:
    """The in-focus plane of every grid cell, the blur per plane and the margin rendered for it."""

    k_focus: list[int]
    defocus_px: float
    margin: int


@dataclass
class CapturePlan:
    """Everything to write, except pixels: truths, render tasks, data.json documents and file times.

    Paths are relative to the scan folder; ``""`` in `docs` is the scan folder itself.
    """

    started: datetime
    dataset: dict[str, Any]
    positions: list[PositionTruth] = field(default_factory=list)
    tasks: list[TileTask] = field(default_factory=list)
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    file_times: dict[str, datetime] = field(default_factory=dict)
    failed_info: dict[str, Any] | None = None
    finished: datetime = DEFAULT_START  # set by plan_captures: 1.5 s after the last event


def plan_focus(spec: ScanSpec, defocus_px: float, rnd: random.Random) -> Focus:
    """Focal plane per cell (``planes // 2`` plus jitter) and the blur margin the worst plane needs."""
    planes = spec.stack
    k_focus = [min(max(planes // 2 + rnd.randint(-spec.focus_jitter, spec.focus_jitter), 0), planes - 1)
               for _ in range(spec.n_positions)]
    max_distance = max(max(k, planes - 1 - k) for k in k_focus) + abs(spec.tilt) / 2
    return Focus(k_focus, defocus_px, math.ceil(3 * defocus_px * max_distance) + 2)


def plan_captures(spec: ScanSpec, geo: Geometry, focus: Focus, rng: np.random.Generator,
                  rnd: random.Random) -> CapturePlan:
    """Walk the positions in scan order: move, autofocus, take the stack (or fail at the last one)."""
    started = spec.start_time or DEFAULT_START
    scan_id = random_uuid(rnd)
    name = f"SmartStack_{started:%Y%m%d_%H%M%S}"
    dataset = {"id": scan_id, "name": name, "type": "smartStack", "acquisitionDate": iso(started),
               "strideSize": [geo.stride["x"], geo.stride["y"], STACK_DZ], "grid": [*spec.grid, spec.stack],
               "style": spec.style}
    ctx = MetadataContext(layout=spec.layout, csm=geo.csm, calibration_hw=geo.calibration_hw,
                          pixel_size_um=spec.pixel_size_um, dataset=dataset, tile_shape=spec.tile_shape,
                          instrument_id=random_uuid(rnd), prefix=spec.usercomment_prefix,
                          write_datetime=spec.layout != "v2" if spec.exif_datetime is None else spec.exif_datetime)
    plan = CapturePlan(started=started, dataset=dataset)
    z_slope = rng.uniform(-0.01, 0.01, size=2)  # the slide is not quite level
    z_base = rnd.randrange(-2000, 2000)
    names = _Names(spec)
    t = started
    for idx, (c, r) in enumerate(geo.order):
        x, y = (int(v) for v in geo.stage_xy[idx])
        kf = focus.k_focus[idx]
        z_focus = int(round(z_base + z_slope[0] * x + z_slope[1] * y + rng.normal(0, 8)))
        z_af = z_focus - (kf - spec.stack // 2) * STACK_DZ  # autofocus centres the stack, a plane or so off
        t += timedelta(seconds=float(rng.uniform(6.0, 11.5)))  # move and autofocus
        if spec.incomplete and idx == len(geo.order) - 1:
            _fail(plan, spec, idx=idx, cell=(c, r), stage_xyz=(x, y, z_af), when=t)
            continue
        t = _take_stack(plan, spec, geo, focus, ctx, names, idx=idx, stage_xyz=(x, y, z_af), start=t,
                        rng=rng, rnd=rnd)
    plan.finished = t + timedelta(seconds=1.5)
    return plan


def _fail(plan: CapturePlan, spec: ScanSpec, *, idx: int, cell: tuple[int, int], stage_xyz: tuple[int, int, int],
          when: datetime) -> None:
    """The position where the scan stopped: no images; a smart stack leaves an error report."""
    folder = f"{stage_xyz[0]}_{stage_xyz[1]}" if spec.kind == "smart-stack" else None
    plan.failed_info = {"index": idx, "grid_cr": list(cell), "folder": folder, "stage_xyz": list(stage_xyz),
                        "error": FAILURE, "time": iso(when)}
    if folder is not None:
        plan.docs[folder] = failed_doc(when=when, stage_xyz=stage_xyz, error=FAILURE)
        plan.file_times[f"{folder}/data.json"] = when


def _take_stack(plan: CapturePlan, spec: ScanSpec, geo: Geometry, focus: Focus, ctx: MetadataContext,
                names: _Names, *, idx: int, stage_xyz: tuple[int, int, int], start: datetime,
                rng: np.random.Generator, rnd: random.Random) -> datetime:
    """Plan one position's images; returns the time of its last capture."""
    x, y, z_af = stage_xyz
    planes, kf = spec.stack, focus.k_focus[idx]
    folder, files = names.position(idx, x, y)
    zs = [z_af + (k - planes // 2) * STACK_DZ for k in range(planes)]
    times, t = [], start
    for _ in range(planes):
        t += timedelta(seconds=float(rng.uniform(0.45, 0.9)))
        times.append(t)
    kind = spec.mistag.get(idx)
    tagged = tagged_planes(kind, kf, planes, rnd)
    exif: list[bytes | None] = [None] * planes
    if spec.has_ofm_metadata:
        exif = [image_exif(ctx, name=files[k], when=times[k], stage={"x": x, "y": y, "z": zs[k]},
                           tags=["central_image"] if k in tagged else [], bad_json=kind == "bad_json", rnd=rnd)
                for k in range(planes)]
    blank = idx in spec.blank_tiles
    prefix = f"{folder}/" if folder else ""
    plan.tasks.append(TileTask(
        paths=[prefix + f for f in files], exif=exif, true_xy=(float(geo.true_xy[idx, 0]), float(geo.true_xy[idx, 1])),
        margin=focus.margin, defocus=focus.defocus_px, k_focus=kf, tilt=float(spec.tilt),
        vignetting=float(spec.vignetting), gradient_angle=rnd.uniform(0, 2 * math.pi) if blank else None,
        quality=int(spec.jpeg_quality), rng=[spec.seed, 2, idx]))
    plan.file_times.update({prefix + f: tk for f, tk in zip(files, times)})
    if spec.kind == "smart-stack":
        plan.file_times[f"{folder}/data.json"] = times[-1]
        plan.docs[folder] = position_doc(when=times[-1], stage_xyz=stage_xyz, files=files, stack_z=zs)
    plan.positions.append(PositionTruth(
        index=idx, grid_cr=geo.order[idx], folder=folder, files=files, z_steps=zs, times=[iso(v) for v in times],
        central_index=kf, central_file=files[kf],
        tagged_files=[files[k] for k in tagged] if spec.has_ofm_metadata else [],
        true_xy=(float(geo.true_xy[idx, 0]), float(geo.true_xy[idx, 1])),
        nominal_xy=(float(geo.nominal[idx, 0]), float(geo.nominal[idx, 1])), stage_xyz=(x, y, zs[kf]),
        blank=blank, mistag=kind))
    return t


class _Names:
    """Folder and file names of each kind: smart stacks by stage position, flat scans arbitrary."""

    def __init__(self, spec: ScanSpec):
        self.spec = spec
        if spec.kind == "flat":  # numbers unrelated to position or capture order (own stream: seeds stay put)
            total = spec.n_positions * spec.stack
            self.numbers = random.Random(f"{spec.seed}:names").sample(range(max(10_000, 10 * total)), total)

    def position(self, idx: int, x: int, y: int) -> tuple[str, list[str]]:
        spec = self.spec
        if spec.kind == "smart-stack":
            digits = max(2, len(str(spec.stack - 1)))
            return f"{x}_{y}", [f"image_{k:0{digits}d}.jpeg" for k in range(spec.stack)]
        if spec.kind == "flat":
            first = idx * spec.stack
            return "", [f"IMG_{n:05d}.jpeg" for n in self.numbers[first:first + spec.stack]]
        return "", [f"tile_{idx:03d}.{_EXTENSIONS[spec.tile_format]}"]
