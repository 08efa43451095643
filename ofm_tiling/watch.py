"""Watch: follow a scan in progress, refresh a quick preview as positions complete, then stitch.

The loop, one poll at a time:

1. find the positions that are complete: their ``data.json`` is written (every image it lists is
   there), and every JPEG ends with its end-of-image marker and has kept its size since the last
   poll;
2. when new ones completed, register the complete positions, reusing every pair measured before
   (`ofm_tiling.paircache`: only the new pairs are measured), solve, and refresh ``preview.jpg``
   (the fused mosaic from reduced decodes) and ``layout.png`` in the output folder;
3. stop when the scan's ``data.json`` says it finished or failed, a position folder holds only a
   failure report, or on Ctrl-C / `stop`;

then run the normal `ofm_tiling.stitch.stitch`, which finds the pairs in the cache: the final
outputs are those of a one-shot stitch of the finished scan. Nothing in the scan folder is written
except the output folder (and ``use/`` by the final stitch).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OfmTilingError, OptionError
from .files import MARKER, ScanLock, check_output_dir, write_text_atomic
from .options import StitchOptions
from .outputs import LAYOUT_PNG, PREVIEW
from .scan import JPEG_SUFFIXES, FailedPosition, Position, Scan, read_position

__all__ = ["Refresh", "ScanFollower", "refresh", "watch"]

log = logging.getLogger("ofm_tiling")

_EOI = b"\xff\xd9"
# Status words of a data.json (the OFM schema is not public, see ofm-scans.md): over, or still under way.
_FINISHED = ("complete", "completed", "finished", "failed", "aborted", "error")
_RUNNING = ("running", "in progress", "in_progress", "started", "scanning", "pending")
# Preview width (px): the mosaic is decoded reduced (1/2, 1/4, 1/8) to about this size.
_PREVIEW_WIDTH = 2000


@dataclass
class Refresh:
    """One refresh of the live outputs: tiles placed, links accepted, seconds taken."""

    tiles: int
    accepted: int
    links: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


class ScanFollower:
    """What a scan in progress holds at each `poll`: its complete positions, and whether it is over.

    Parameters
    ----------
    root : path-like
        The scan folder.
    skip : paths
        Folders inside the scan to pass over (the outputs).
    """

    def __init__(self, root: str | os.PathLike, skip: tuple[Path, ...] = ()):
        self.root = Path(root)
        self.skip = {p.resolve() for p in skip}
        self.sizes: dict[Path, tuple[tuple[str, int], ...]] = {}
        self.complete: dict[str, Position] = {}

    def poll(self) -> tuple[list[Position], str | None]:
        """Complete positions in folder order, and why the scan is over (None while it runs)."""
        over = _scan_status(self.root)
        try:
            entries = sorted((e for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")),
                             key=lambda e: e.name)
        except OSError:
            entries = []
        for entry in entries:
            folder = Path(entry.path)
            if entry.name in self.complete or folder.resolve() in self.skip or (folder / MARKER).exists():
                continue
            sizes = _jpeg_sizes(folder)
            stable = sizes and self.sizes.get(folder) == sizes
            self.sizes[folder] = sizes
            if not sizes and (folder / "data.json").exists():
                found = read_position(folder)
                if isinstance(found, FailedPosition) and not _running(found.data):
                    over = over or f"{folder.name}: {found.report}"
            elif stable and _finished_position(folder, sizes):
                found = read_position(folder)
                if isinstance(found, Position) and found.images:
                    self.complete[entry.name] = found
        return [self.complete[k] for k in sorted(self.complete)], over


def _running(data: Any) -> bool:
    """A data.json that says its position or scan is still under way (then no images is no failure yet)."""
    return isinstance(data, dict) and str(data.get("status", "")).lower() in _RUNNING


def _jpeg_sizes(folder: Path) -> tuple[tuple[str, int], ...]:
    try:
        return tuple(sorted((e.name, e.stat().st_size) for e in os.scandir(folder)
                            if e.is_file() and Path(e.name).suffix.lower() in JPEG_SUFFIXES))
    except OSError:
        return ()


def _finished_position(folder: Path, sizes: tuple[tuple[str, int], ...]) -> bool:
    """The position's data.json lists only images that are there, and every JPEG is whole."""
    data = _json(folder / "data.json")
    if data is None:
        return False
    names = {name for name, _ in sizes}
    listed = data.get("images") if isinstance(data, dict) else None
    if isinstance(listed, list) and not {Path(str(n)).name for n in listed} <= names:
        return False
    for name, size in sizes:
        if size < 4:
            return False
        with open(folder / name, "rb") as fh:
            fh.seek(size - 2)
            if fh.read(2) != _EOI:
                return False
    return True


def _json(path: Path) -> Any:
    """A data.json's contents, or None while it is missing or half written."""
    try:
        return json.loads(path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError):
        return None


def _scan_status(root: Path) -> str | None:
    """Why the scan is over, from its data.json (None while it runs or says nothing)."""
    data = _json(root / "data.json")
    if not isinstance(data, dict):
        return None
    status = str(data.get("status", "")).lower()
    if status in _FINISHED:
        return f"the scan's data.json says {status}"
    if data.get("finished"):
        return "the scan's data.json says it finished"
    return None


def refresh(root: Path, positions: list[Position], out: Path, cache: Any, options: StitchOptions) -> Refresh:
    """Register the complete `positions` (new pairs only, through `cache`), solve, and write
    ``preview.jpg`` and ``layout.png`` into `out`."""
    from .backend import BuiltinBackend
    from .report import report_frame

    t0 = time.perf_counter()
    collection = _live_collection(root, positions, options)
    placement = BuiltinBackend().place(collection, workers=options.thread_count(), show_progress=False, cache=cache)
    placement = placement.shifted(-placement.positions.min(axis=0))
    t1 = time.perf_counter()
    _write_preview(out / PREVIEW, collection.paths, placement.positions, collection.tile_shape,
                   options.thread_count())
    frame = report_frame(placement, collection.positions)
    from .layout_picture import draw_layout

    draw_layout(out / LAYOUT_PNG, frame.placement, names=[t.position for t in collection.tiles],
                stage_positions=frame.stage_positions, tile_shape=collection.tile_shape)
    t2 = time.perf_counter()
    return Refresh(len(positions), sum(lk.accepted for lk in placement.links), len(placement.links), t2 - t0,
                   {"registration": t1 - t0, "preview": t2 - t1})


def _live_collection(root: Path, positions: list[Position], options: StitchOptions) -> Any:
    """The complete positions as a `Collection` that reads each tile where the scan wrote it."""
    from .collect import Collection, plan_tiles
    from .selection import select_image

    scan = Scan(root, None, positions, [], [])
    selections = [select_image(p, mode=options.select) for p in positions]
    plan = plan_tiles(scan, selections, grid=options.grid, overlap=options.overlap)
    tiles = [replace(t, name=str(t.source.relative_to(root))) for t in plan.tiles]
    return Collection(root, root, tiles, plan.tile_shape, plan.positions, plan.pixel_size_um, plan.order,
                      plan.layout, [])


def _write_preview(path: Path, paths: list[Path], positions: np.ndarray, tile_shape: tuple[int, int],
                   workers: int) -> None:
    """The fused mosaic from decodes reduced to about the preview's width (memory: the small mosaic)."""
    from .fuse import fuse_mosaic, mosaic_shape
    from .imageio import read_rgb
    from .preview import write_preview

    width = mosaic_shape(positions, tile_shape)[1]
    scale = next((s for s in (8, 4, 2) if width / s >= _PREVIEW_WIDTH), 1)
    shape = (-(-tile_shape[0] // scale), -(-tile_shape[1] // scale))
    mosaic = fuse_mosaic(lambda i: read_rgb(paths[i], scale), np.asarray(positions) / scale, shape,
                         workers=workers)
    image = np.concatenate([rows for _, rows in mosaic.bands])
    write_preview(path, image, width=_PREVIEW_WIDTH)


def watch(scan_dir: str | os.PathLike, *, out: str | os.PathLike | None = None,
          use: str | os.PathLike | None = None, options: StitchOptions | None = None, poll: float = 2.0,
          stop: threading.Event | None = None, on_refresh: Callable[[Refresh], None] | None = None,
          show_progress: bool = False, **keywords) -> Any:
    """Follow a scan in progress, refreshing the preview and layout, then stitch it.

    Parameters
    ----------
    scan_dir : path
        The smart-stack scan folder (it may still be empty of positions).
    out, use, options, show_progress, **keywords
        As for :func:`ofm_tiling.stitch.stitch` (the final run).
    poll : float
        Seconds between looks at the scan folder; a file must keep its size across one poll.
    stop : threading.Event, optional
        Set it to stop following (as Ctrl-C does) and stitch what is there.
    on_refresh : callable, optional
        Called with each `Refresh`.

    Returns
    -------
    StitchResult
        The final stitch.
    """
    from .stitch import stitch

    options = replace(options or StitchOptions(), **keywords)
    options.check()
    if not poll > 0:
        raise OptionError("poll", "must be more than 0 seconds")
    root = Path(scan_dir)
    out_dir = Path(out) if out is not None else root / "stitched"
    use_dir = Path(use) if use is not None else root / "use"
    if not root.is_dir():
        raise OfmTilingError(root, "scan folder not found")
    check_output_dir(out_dir, parameter="out")
    _follow(root, out_dir, use_dir, options, poll, stop or threading.Event(), on_refresh)
    return stitch(root, out=out_dir, use=use_dir, options=options, show_progress=show_progress)


def _follow(root: Path, out: Path, use: Path, options: StitchOptions, poll: float, stop: threading.Event,
            on_refresh: Callable[[Refresh], None] | None) -> None:
    """Poll until the scan is over (or `stop`, or Ctrl-C), refreshing whenever positions completed."""
    from .paircache import PAIR_CACHE, PairCache

    follower = ScanFollower(root, skip=(out, use))
    cache = PairCache(out / PAIR_CACHE, out / PAIR_CACHE)
    seen = 0
    try:
        while True:
            positions, over = follower.poll()
            if len(positions) > seen:
                seen = len(positions)
                done = _refresh_locked(root, positions, out, use, cache, options)
                if done is not None and on_refresh is not None:
                    on_refresh(done)
            if over:
                log.info(f"scan over ({over}): stitching")
                return
            if stop.wait(poll):
                return
    except KeyboardInterrupt:
        log.info("interrupted: stitching what is there")


def _refresh_locked(root: Path, positions: list[Position], out: Path, use: Path, cache: Any,
                    options: StitchOptions) -> Refresh | None:
    """`refresh` under the scan's lock; a problem is a warning (the final stitch reports it in full)."""
    try:
        with ScanLock(use.parent, wait=True):
            _prepare(out)
            cache.begin()
            done = refresh(root, positions, out, cache, options)
    except OfmTilingError as exc:
        log.warning(f"preview not refreshed: {exc}")
        return None
    log.info(f"{done.tiles} positions placed ({done.accepted}/{done.links} links accepted); preview and layout "
             f"refreshed in {done.seconds:.1f} s")
    return done


def _prepare(out: Path) -> None:
    """The output folder, made (with the ofm-tiling marker) if it is not there yet."""
    if not (out / MARKER).exists():
        check_output_dir(out, parameter="out")
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / MARKER, "Made by ofm-tiling; replaced as a whole on every run.\n")

