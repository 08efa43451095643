"""Stitch: collect → focus check → place (register + solve) → fuse → write, as one unit.

Both backends end in the same outputs: ``use/TileConfiguration.registered.txt`` and, in the output
folder, ``mosaic.ome.tif`` (pyramidal), ``preview.jpg``, ``stitching-report.json`` and
``layout.png``. ``use/`` and the output folder are built under staging names and replaced together
when the run completes, so a run that fails or is killed leaves the previous result as it was.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .files import FolderSwap, ScanLock, check_output_dir, recover
from .options import StitchOptions
from .outputs import LAYOUT_PNG, MOSAIC, PREVIEW, REGISTERED, REPORT, VIEWER
from .sources import TileSource, read_source

if TYPE_CHECKING:
    from .backend import Backend, Mosaic
    from .collect import Collection
    from .paircache import PairCache
    from .placement import Placement

log = logging.getLogger("ofm_tiling")



@dataclass
class StitchResult:
    """Where the outputs are and what the run found."""

    collection: Collection
    out_dir: Path
    placement: Placement
    shape: tuple[int, int]
    backend: str
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def positions(self) -> np.ndarray:
        """Final top-left corners ``(x, y)`` of the tiles in the mosaic, in pixels."""
        return self.placement.positions

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

    @property
    def viewer(self) -> Path:
        """The viewer's page (present when the run wrote a viewer)."""
        return self.out_dir / VIEWER / "index.html"


@dataclass
class _Folders:
    """The folders of one run: the scan, and the two it replaces."""

    scan: Path
    use: Path
    out: Path

    @classmethod
    def of(cls, scan_dir: str | os.PathLike, use: str | os.PathLike | None,
           out: str | os.PathLike | None) -> _Folders:
        root = Path(scan_dir)
        return cls(root, Path(use) if use is not None else root / "use",
                   Path(out) if out is not None else root / "stitched")


class _Clock:
    """Wall time of each named step."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def make_backend(options: StitchOptions) -> Backend:
    """The backend the options name, ready to `check`."""
    if options.backend == "fiji":
        from .fiji import FijiBackend

        return FijiBackend(fiji=options.fiji, layout=options.fiji_layout,
                           keep_fiji_mosaic=options.keep_fiji_mosaic)
    from .backend import BuiltinBackend

    return BuiltinBackend()


def stitch(scan_dir: str | os.PathLike, *, out: str | os.PathLike | None = None,
           use: str | os.PathLike | None = None, options: StitchOptions | None = None,
           show_progress: bool = False, **keywords) -> StitchResult:
    """Collect a scan and stitch it into one pyramidal mosaic.

    Parameters
    ----------
    scan_dir : path
        The scan folder: a smart-stack scan, a flat OFM scan or a folder of tiles with a
        ``TileConfiguration.txt`` (see `ofm_tiling.sources`).
    out : path, optional
        Output folder (default ``scan_dir/stitched``), replaced as a whole on every run.
    use : path, optional
        Folder for the collected tiles (default ``scan_dir/use``), replaced together with `out`.
    options : StitchOptions, optional
        Every option of the run; or give them as keywords (``backend="fiji"``, ``quality=80``…,
        the fields of `ofm_tiling.options.StitchOptions`): select, focus, link, strict, grid,
        overlap, layout, workers, backend, fiji, fiji_layout, keep_fiji_mosaic, compression, quality,
        check_focus, viewer, wait.
    show_progress : bool
        Draw progress bars on stderr.

    Raises
    ------
    OptionError
        For an option value that cannot work, before any work starts.
    OfmTilingError
        For a problem with the scan or the output folders; the previous result stays as it was.
    """
    options = replace(options or StitchOptions(), **keywords)
    options.check()
    backend = make_backend(options)
    backend.check()
    folders = _Folders.of(scan_dir, use, out)
    for folder, parameter in ((folders.use, "use"), (folders.out, "out")):
        check_output_dir(folder, parameter=parameter)
    scan = read_source(folders.scan, layout=options.layout,  # a missing scan is named before any write
                       skip=(folders.out, folders.use))
    with ScanLock(folders.use.parent, wait=options.wait):
        for note in recover(folders.use.parent, [folders.use, folders.out]):
            log.warning(note)
        return _run(scan, folders, options, backend, show_progress)


def _run(scan: TileSource, folders: _Folders, options: StitchOptions, backend: Backend,
         show_progress: bool) -> StitchResult:
    """The run itself, under the scan's lock: every output built in staging, then swapped in."""
    clock = _Clock()
    workers = options.thread_count()
    with FolderSwap([folders.use, folders.out], journal_dir=folders.use.parent) as swap:
        staging_out = swap.staging(folders.out)  # made first: an unwritable output fails before any work
        with clock.step("collect"):
            collection = _collect(scan, options, swap.staging(folders.use))
        notes = list(collection.notes)
        focus_rows = _focus_check(collection, options, clock, notes)
        log.info(f"registering {len(collection.tiles)} tiles ({backend.name} backend)")
        with clock.step("registration"):
            placement = backend.place(collection, workers=workers, show_progress=show_progress,
                                      cache=_pair_cache(folders.out, staging_out))
        placement = placement.shifted(-placement.positions.min(axis=0))
        notes.extend(placement.notes)
        log.info("fusing and writing the mosaic")
        with clock.step("fusion"):
            mosaic = backend.own_mosaic(collection, placement) or _fuse(collection, placement, workers,
                                                                        show_progress)
            shape = _write_outputs(staging_out, collection, placement, mosaic, options,
                                   focus_rows=focus_rows, notes=notes, timings=clock.timings)
        swap.commit()
    for note in notes:
        log.warning(note)
    collection = replace(collection, use_dir=folders.use)
    return StitchResult(collection, folders.out, placement, shape, backend.name, clock.timings, notes)


def _pair_cache(out: Path, staging_out: Path) -> PairCache:
    """The previous result's pairwise results, to be saved (as used) in the new output folder."""
    from .paircache import PAIR_CACHE, PairCache

    return PairCache(out / PAIR_CACHE, staging_out / PAIR_CACHE)


def _collect(scan: TileSource, options: StitchOptions, staging: Path) -> Collection:
    from .collect import collect_into

    log.info(f"collecting {scan.root}")
    log.info(f"found: {scan.summary}")
    o = options.collect_options()
    return collect_into(staging, scan, select=o.select, link=o.link, strict=o.strict, grid=o.grid,
                        overlap=o.overlap, focus=o.focus, workers=o.thread_count())


def _focus_check(collection: Collection, options: StitchOptions, clock: _Clock, notes: list[str]) -> list[dict]:
    """Every stack's focus curve, with a note for each position whose tagged plane looks wrong."""
    if not options.check_focus:
        return []
    from .collect import focus_survey

    with clock.step("focus check"):
        rows = focus_survey(collection.tiles, workers=options.thread_count())
    notes.extend(f"{r['position']}: {r['message']}" for r in rows if r["message"])
    return rows


def _fuse(collection: Collection, placement: Placement, workers: int, show_progress: bool) -> Mosaic:
    from .fuse import fuse_mosaic
    from .progress import progress_bar

    mosaic = fuse_mosaic(collection.paths, placement.positions, collection.tile_shape, workers=workers,
                         pixel_type=collection.pixel_type)

    def bands() -> Iterator[tuple[int, np.ndarray]]:  # the bar lasts as long as the bands do
        with progress_bar("fusing", enabled=show_progress) as bar:
            height = mosaic.shape[0]
            for y0, rows in mosaic.bands:
                yield y0, rows
                if bar is not None:
                    bar(y0 + len(rows), height)

    return mosaic._replace(bands=bands())


def _write_outputs(folder: Path, collection: Collection, placement: Placement, mosaic: Mosaic,
                   options: StitchOptions, *, focus_rows: list[dict], notes: list[str],
                   timings: dict[str, float]) -> tuple[int, int]:
    """Write the registered TileConfiguration, the mosaic, its preview, the report and the picture."""
    from .pyramid import compression_for, write_ome_tiff
    from .tileconfig import write_tile_configuration

    write_tile_configuration(collection.use_dir / REGISTERED, collection.names, placement.positions)
    compression, note = compression_for(options.compression, mosaic.pixel_type)
    notes.extend([note] if note else [])
    written = write_ome_tiff(folder / MOSAIC, mosaic.shape, mosaic.bands, pixel_size_um=collection.pixel_size_um,
                             compression=compression, quality=options.quality, preview_path=folder / PREVIEW,
                             workers=options.thread_count(), name=collection.scan.name, pixel_type=mosaic.pixel_type)
    extra = _run_record(collection, placement, mosaic.shape, options, focus_rows, notes, timings)
    extra.update(pixel_type=mosaic.pixel_type, display_range=written["display_range"])
    _write_report(folder, collection, placement, extra)
    if options.viewer:
        from .viewer import write_viewer

        log.info("writing the viewer")
        write_viewer(folder, workers=options.thread_count())
    return mosaic.shape


def _run_record(collection: Collection, placement: Placement, shape: tuple[int, int], options: StitchOptions,
                focus_rows: list[dict], notes: list[str], timings: dict[str, float]) -> dict:
    """What the report keeps about the run besides tiles and links."""
    return {"backend": placement.backend, "scan": str(collection.scan), "kind": collection.kind,
            "use": str(collection.use_dir), "tile_shape": list(collection.tile_shape), "mosaic_shape": list(shape),
            "order": collection.order,
            "layout": collection.layout, "pixel_size_um": collection.pixel_size_um, "notes": notes,
            "failed_positions": [{"folder": f.folder.name, "report": f.report} for f in collection.failed],
            "focus": focus_rows, "options": {"select": options.select, "focus": options.focus,
                                             "compression": options.compression, "quality": options.quality},
            "timings_s": {k: round(v, 3) for k, v in timings.items()}}


def _write_report(folder: Path, collection: Collection, placement: Placement, extra: dict) -> None:
    """The JSON report and the layout picture, with stage positions in the mosaic's frame."""
    from .layout_picture import draw_layout
    from .report import report_frame, write_report

    frame = report_frame(placement, collection.positions)
    write_report(folder / REPORT, frame.placement, names=collection.names, stage_positions=frame.stage_positions,
                 extra=extra)
    draw_layout(folder / LAYOUT_PNG, frame.placement, names=collection.names, stage_positions=frame.stage_positions,
                tile_shape=collection.tile_shape)
