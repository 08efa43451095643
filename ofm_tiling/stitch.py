"""Stitch: collect → register → solve → fuse → write, with the built-in or the Fiji backend.

Both backends end in the same outputs: ``use/TileConfiguration.registered.txt`` and, in the output
folder, ``mosaic.ome.tif`` (pyramidal), ``preview.jpg``, ``stitching-report.json`` and
``layout.png``.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .collect import Collection, collect, focus_survey, prepare_output_dir, replace_dir
from .errors import OfmTilingError
from .progress import progress_bar
from .tileconfig import write_tile_configuration

log = logging.getLogger("ofm_tiling")

MOSAIC = "mosaic.ome.tif"
PREVIEW = "preview.jpg"
REPORT = "stitching-report.json"
LAYOUT_PNG = "layout.png"
REGISTERED = "TileConfiguration.registered.txt"


@dataclass
class StitchResult:
    """Where the outputs are and what the run found."""

    collection: Collection
    out_dir: Path
    positions: np.ndarray
    shape: tuple[int, int]
    backend: str
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def mosaic(self) -> Path:
        return self.out_dir / MOSAIC

    @property
    def preview(self) -> Path:
        return self.out_dir / PREVIEW

    @property
    def report(self) -> Path:
        return self.out_dir / REPORT

    @property
    def layout_png(self) -> Path:
        return self.out_dir / LAYOUT_PNG

    @property
    def registered(self) -> Path:
        return self.collection.use_dir / REGISTERED


def _unregistered(positions: np.ndarray):
    """Registration and solution records for positions that did not come from our registration."""
    from .register import Registration
    from .solve import Solution

    n = len(positions)
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return (Registration([], float("nan"), np.zeros(0), float("nan")),
            Solution(np.asarray(positions, float), {}, identity, [[k] for k in range(n)], []))


def _in_frame(solution, positions: np.ndarray, stage_shift: np.ndarray):
    """The solution with its positions replaced by `positions` (shifted) and the stage model
    rewritten for stage positions moved by `stage_shift`, so the report uses one frame."""
    model = np.array(solution.stage_model, dtype=float)
    shift = solution.positions[0] - positions[0]  # what was subtracted from every solved position
    model[:, 2] -= model[:, :2] @ stage_shift[0] + shift
    return replace(solution, positions=positions, stage_model=model)


def _register_builtin(collection: Collection, *, workers: int, show_progress: bool):
    from .register import JpegTiles, register
    from .solve import solve

    stage = collection.positions
    if len(collection.tiles) == 1:
        registration, solution = _unregistered(stage)
        return stage.copy(), registration, solution, ["only one tile: nothing to register"]
    with progress_bar("registering", enabled=show_progress) as bar:
        registration = register(JpegTiles(collection.paths), stage, tile_shape=collection.tile_shape,
                                workers=workers, progress=bar)
    accepted = sum(link.accepted for link in registration.links)
    notes = []
    if accepted == 0:
        notes.append("no pair of tiles could be registered (blank glass or no overlap?): "
                     "the mosaic uses the stage positions")
    solution = solve(stage, registration.links)
    return solution.positions, registration, solution, notes


def stitch(scan_dir: str | os.PathLike, *, out: str | os.PathLike | None = None,
           use: str | os.PathLike | None = None, backend: str = "builtin", select: str = "tag",
           focus: str = "central", link: bool = False, strict: bool = False,
           grid: tuple[int, int] | None = None, overlap: float | None = None,
           fiji: str | os.PathLike | None = None, fiji_layout: str = "positions",
           compression: str = "jpeg", quality: int = 90, workers: int | None = None,
           check_focus: bool = True, show_progress: bool = False) -> StitchResult:
    """Collect a smart-stack scan and stitch it into one pyramidal mosaic.

    Parameters
    ----------
    scan_dir : path
        The smart-stack scan folder.
    out : path, optional
        Output folder (default ``scan_dir/stitched``), replaced as a whole on every run.
    use : path, optional
        Folder for the collected tiles (default ``scan_dir/use``).
    backend : {"builtin", "fiji"}
        Built-in registration and fusion, or Fiji's Grid/Collection stitching.
    select, link, strict, grid, overlap
        As for `ofm_tiling.collect.collect`.
    focus : {"central", "edf"}
        Stitch the chosen plane of every position, or an all-in-focus image of every stack.
    fiji, fiji_layout
        Fiji.app folder and layout mode for the Fiji backend.
    compression, quality
        OME-TIFF tile compression (``"jpeg"``, ``"deflate"``, ``"none"``) and JPEG quality.
    workers : int, optional
        Threads for decoding, correlation and compression (default: all cores).
    check_focus : bool
        Record every stack's focus curve in the report and flag positions whose tagged plane is
        not the sharpest or whose curve has no clear peak (decodes every plane at 1/8 size).
    show_progress : bool
        Draw progress bars on stderr.
    """
    if backend not in ("builtin", "fiji"):
        raise OfmTilingError(None, f"--backend must be 'builtin' or 'fiji', not {backend!r}")
    fiji_backend = None
    if backend == "fiji":  # found and checked before any work starts
        from .fiji import FijiBackend

        fiji_backend = FijiBackend(fiji=fiji, layout=fiji_layout)
        fiji_backend.check()
    workers = workers or os.cpu_count() or 1
    root = Path(scan_dir)
    out_dir = Path(out) if out is not None else root / "stitched"
    use_dir = Path(use) if use is not None else root / "use"
    prepare_output_dir(out_dir, purpose="--out")
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    collection = collect(root, out=use_dir, select=select, link=link, strict=strict, grid=grid,
                         overlap=overlap, skip=(out_dir,), focus=focus, workers=workers)
    timings["collect"] = time.perf_counter() - t0
    notes = list(collection.notes)
    focus_rows = []
    if check_focus:
        t0 = time.perf_counter()
        focus_rows = focus_survey(collection.tiles, workers=workers)
        notes.extend(f"{r['position']}: {r['message']}" for r in focus_rows if r["message"])
        timings["focus check"] = time.perf_counter() - t0
    names = collection.names
    stage = collection.positions
    h, w = collection.tile_shape

    from .fuse import fuse_bands, mosaic_shape
    from .imageio import read_rgb
    from .report import draw_layout, write_report
    from .writers import write_ome_tiff

    t0 = time.perf_counter()
    if fiji_backend is None:
        positions, registration, solution, more = _register_builtin(collection, workers=workers,
                                                                     show_progress=show_progress)
    else:
        placement = fiji_backend.place(collection, workers=workers, show_progress=show_progress)
        positions = placement.positions
        registration, solution = _unregistered(positions)
        more = list(placement.notes)
    notes.extend(more)
    timings["registration"] = time.perf_counter() - t0
    positions = np.asarray(positions, dtype=float)
    positions = positions - positions.min(axis=0)
    write_tile_configuration(collection.use_dir / REGISTERED, names, positions)

    t0 = time.perf_counter()
    shape = mosaic_shape(positions, collection.tile_shape)

    def build(tmp: Path) -> None:
        # Both backends: the built-in fusion (FijiBackend.own_mosaic is None by default).
        paths = collection.paths
        fused_shape = shape
        with progress_bar("fusing", enabled=show_progress) as bar:
            bands = fuse_bands(lambda i: read_rgb(paths[i]), positions, (h, w), workers=workers,
                               progress=bar)
        write_ome_tiff(tmp / MOSAIC, fused_shape, bands, pixel_size_um=collection.pixel_size_um,
                       compression=compression, quality=quality, preview_path=tmp / PREVIEW,
                       workers=workers, name=root.name)
        extra = {"backend": backend, "scan": str(root), "use": str(collection.use_dir),
                 "tile_shape": [h, w], "mosaic_shape": list(fused_shape), "order": collection.order,
                 "layout": collection.layout, "pixel_size_um": collection.pixel_size_um, "notes": notes,
                 "failed_positions": [{"folder": f.folder.name, "report": f.report} for f in collection.failed],
                 "focus": focus_rows, "timings_s": {k: round(v, 3) for k, v in timings.items()}}
        # Show stage positions in the mosaic's frame, so displacements exclude the one global shift.
        stage_in_mosaic = stage + (positions - stage).mean(axis=0)
        final = _in_frame(solution, positions, stage_in_mosaic - stage)
        write_report(tmp / REPORT, names=names, stage_positions=stage_in_mosaic, solution=final,
                     registration=registration, extra=extra)
        draw_layout(tmp / LAYOUT_PNG, stage_positions=stage_in_mosaic, positions=positions, tile_shape=(h, w),
                    links=registration.links, names=names, rejected_in_solve=solution.rejected_in_solve)

    replace_dir(build, out_dir)
    timings["fusion"] = time.perf_counter() - t0
    for note in notes[len(collection.notes):]:
        log.warning(note)
    return StitchResult(collection, out_dir, positions, shape, backend, timings, notes)
