"""Collect: pick one image per position, order the tiles, lay them out, and write a Fiji-ready ``use/``.

The pipeline's first stage: scan → selection → order → layout → ``use/`` (tiles ``00.jpeg``…,
``TileConfiguration.txt``, ``tiles.csv``). Nothing outside the output folder is changed.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .errors import OfmTilingError
from .focus import focus_curve
from .layout import grid_positions, scan_order, stage_to_pixels
from .metadata import ImageMetadata
from .scan import MARKER, OWN_OUTPUT, FailedPosition, Position, Scan, read_scan
from .tileconfig import format_tile_configuration

log = logging.getLogger("ofm_tiling")

TILE_CONFIGURATION = "TileConfiguration.txt"
TILES_CSV = "tiles.csv"
FAILURE_REPORT = "scan-failure.txt"


@dataclass
class Selection:
    """The image chosen for one position and why."""

    position: Position
    image: ImageMetadata
    plane: int
    reason: str
    focus: list[float] | None = None
    fallback: bool = False


@dataclass
class Tile:
    """One collected tile: its name in ``use/``, where it came from and where it sits."""

    name: str
    source: Path
    position: str
    plane: int
    stage: tuple[float, float, float] | None
    time: datetime | None
    xy: tuple[float, float]
    reason: str
    stack: tuple[Path, ...] = ()
    tagged_plane: int | None = None


@dataclass
class Collection:
    """What `collect` produced."""

    scan: Path
    use_dir: Path
    tiles: list[Tile]
    tile_shape: tuple[int, int]
    positions: np.ndarray
    pixel_size_um: float | None
    order: str
    layout: str
    failed: list[FailedPosition]
    notes: list[str] = field(default_factory=list)

    @property
    def tile_configuration(self) -> Path:
        return self.use_dir / TILE_CONFIGURATION

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tiles]

    @property
    def paths(self) -> list[Path]:
        return [self.use_dir / t.name for t in self.tiles]


# --- selection -------------------------------------------------------------------------------

def select_image(position: Position, *, mode: str = "tag") -> Selection:
    """Choose the image to use for one position.

    ``mode="tag"`` takes the single image tagged ``central_image``; when none or several are
    tagged (or the metadata is unreadable) it falls back to the sharpest by a focus measure on a
    reduced-resolution decode. ``mode="sharpest"`` always uses the focus measure.
    """
    images = position.images
    if not images:
        raise OfmTilingError(position.folder, "no readable JPEG image in this position")
    tagged = [k for k, im in enumerate(images) if im.is_central]
    if mode == "tag" and len(tagged) == 1:
        return Selection(position, images[tagged[0]], tagged[0], "tagged central_image")
    curve = focus_curve([im.path for im in images]).tolist()
    best = int(np.argmax(curve))
    if mode == "sharpest":
        reason = "sharpest by focus measure (--select sharpest)"
        if len(tagged) == 1 and tagged[0] != best:
            reason += f"; tagged central_image is {images[tagged[0]].path.name}"
        return Selection(position, images[best], best, reason, curve)
    unreadable = [im for im in images if im.problem]
    if len(tagged) > 1:
        why = f"{len(tagged)} images tagged central_image"
    elif unreadable and len(unreadable) == len(images):
        why = f"metadata unreadable ({unreadable[0].problem})"
    else:
        why = "no image tagged central_image"
    return Selection(position, images[best], best, f"{why}: sharpest by focus measure", curve, fallback=True)


def _check_position(position: Position, selection: Selection, mode: str) -> list[str]:
    """Damaged files: fatal when one may be the image to use, otherwise a note."""
    if not selection.image.complete:
        raise OfmTilingError(selection.image.path, "JPEG is truncated (no end-of-image marker)")
    if position.damaged and mode == "tag" and selection.fallback:
        # Without an intact tagged image, the damaged file may well be the central one.
        path, problem = position.damaged[0]
        raise OfmTilingError(path, f"{problem}; no other image of {position.name} is tagged central_image")
    why = "left out of the focus comparison" if mode == "sharpest" else "not needed (the tagged image is intact)"
    return [f"{path}: {problem}; {why}" for path, problem in position.damaged]


# --- consistency and layout ------------------------------------------------------------------

def _stage_of(selection: Selection) -> tuple[float, float, float] | None:
    if selection.image.stage is not None:
        return selection.image.stage
    # All planes of a stack share x and y; any of them will do.
    for im in selection.position.images:
        if im.stage is not None:
            return (im.stage[0], im.stage[1], selection.image.stage[2] if selection.image.stage else im.stage[2])
    return None


def _time_of(selection: Selection) -> datetime | None:
    if selection.image.time is not None:
        return selection.image.time
    times = [im.time for im in selection.position.images if im.time is not None]
    return min(times) if times else None


def _check_sizes(selections: list[Selection]) -> tuple[int, int]:
    first = selections[0].image
    for s in selections[1:]:
        im = s.image
        if (im.width, im.height) != (first.width, first.height):
            raise OfmTilingError(im.path, f"image is {im.width}x{im.height} but {first.path} is "
                                          f"{first.width}x{first.height}; all tiles must be the same size")
    return first.height, first.width


def _check_calibration(selections: list[Selection]) -> tuple[np.ndarray, int] | None:
    found = None
    for s in selections:
        for im in [s.image] + [o for o in s.position.images if o is not s.image]:
            if im.csm is None:
                continue
            if found is None:
                found = im
            elif im.csm_width != found.csm_width or not np.allclose(im.csm, found.csm, rtol=1e-6, atol=1e-9):
                raise OfmTilingError(im.path, f"camera-stage mapping {np.round(im.csm, 6).tolist()} "
                                              f"disagrees with {np.round(found.csm, 6).tolist()} in {found.path}")
            break  # one matrix per position is enough; stacks share the calibration
    return None if found is None else (found.csm, found.csm_width or found.width)


def _tagged_plane(position: Position) -> int | None:
    tagged = [k for k, im in enumerate(position.images) if im.is_central]
    return tagged[0] if len(tagged) == 1 else None


def _natural_key(name: str) -> list:
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(-?\d+)", name)]


def tile_name_width(n: int) -> int:
    """Digits in tile names: at least 2 (``00``–``99``), 3 from 101 tiles (``000``), and so on."""
    return max(2, len(str(max(n - 1, 0))))


def plan_tiles(scan: Scan, selections: list[Selection], *, grid: tuple[int, int] | None = None,
               overlap: float | None = None, snake: bool = False) -> tuple[list[Tile], np.ndarray, str, str, tuple[int, int], float | None]:
    """Order the selected images, give them names and positions (no I/O).

    Returns tiles, positions, how they were ordered, how they were laid out, tile shape (h, w) and
    the pixel size in micrometres (or None).
    """
    tile_shape = _check_sizes(selections)
    stages = [_stage_of(s) for s in selections]
    times = [_time_of(s) for s in selections]
    calibration = _check_calibration(selections)

    if grid is not None:
        layout = f"grid {grid[0]}x{grid[1]}, overlap {overlap:g} (--grid)"
        xy_stage = None
    else:
        missing = [s for s, st in zip(selections, stages) if st is None]
        if missing:
            im = missing[0].image
            raise OfmTilingError(im.path, f"no stage position in the metadata ({im.problem or 'no stage key'}); "
                                          "lay the tiles out on a regular grid with --grid COLSxROWS --overlap F")
        if calibration is None:
            raise OfmTilingError(selections[0].image.path, "no camera-stage mapping in the metadata; "
                                 "lay the tiles out on a regular grid with --grid COLSxROWS --overlap F")
        csm, csm_width = calibration
        xy_stage = stage_to_pixels(np.array([st[:2] for st in stages]), csm, csm_width=csm_width,
                                   image_width=tile_shape[1])
        layout = "stage positions through the camera-stage mapping"

    if all(t is not None for t in times):
        order = sorted(range(len(selections)), key=lambda k: (times[k], _natural_key(selections[k].position.name)))
        order_source = "capture time"
    elif xy_stage is not None:
        order = scan_order(xy_stage, tile_shape).tolist()
        order_source = "stage scan order (no capture time in the metadata)"
    else:
        order = sorted(range(len(selections)), key=lambda k: _natural_key(selections[k].position.name))
        order_source = "folder names (no capture time or stage position in the metadata)"

    n = len(selections)
    if xy_stage is not None:
        positions = xy_stage[order]
    else:
        cols, rows = grid
        if n > cols * rows:
            raise OfmTilingError(scan.root, f"{n} positions do not fit the {cols}x{rows} grid given with --grid")
        positions = grid_positions(n, cols=cols, rows=rows, tile_shape=tile_shape, overlap=overlap, snake=snake)
    width = tile_name_width(n)
    tiles = []
    for k, idx in enumerate(order):
        s = selections[idx]
        tiles.append(Tile(f"{k:0{width}d}.jpeg", s.image.path, s.position.name, s.plane, stages[idx], times[idx],
                          (float(positions[k, 0]), float(positions[k, 1])), s.reason,
                          tuple(im.path for im in s.position.images), _tagged_plane(s.position)))
    pixel = next((s.image.um_per_px for s in selections if s.image.um_per_px), None)
    return tiles, positions, order_source, layout, tile_shape, pixel


def focus_survey(tiles: list[Tile], *, workers: int | None = None) -> list[dict]:
    """Focus curve of every position's stack and what it says (for the report).

    Flags positions whose tagged plane is not the sharpest and stacks without a clear focus peak,
    so a user sees where autofocus failed. Decodes every plane at 1/8 resolution.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .focus import analyse_curve

    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        curves = list(pool.map(lambda t: focus_curve(list(t.stack)), tiles))
    rows = []
    for t, curve in zip(tiles, curves):
        v = analyse_curve(curve, tagged=t.tagged_plane)
        rows.append({"tile": t.name, "position": t.position, "used_plane": t.plane, "tagged_plane": t.tagged_plane,
                     "sharpest_plane": v.best, "prominence": round(float(v.prominence), 4),
                     "clear_peak": bool(v.clear_peak), "tagged_is_sharpest": v.tagged_is_sharpest,
                     "curve": [round(float(c), 6) for c in curve], "message": v.message})
    return rows


# --- writing use/ ----------------------------------------------------------------------------

def tiles_csv(tiles: list[Tile], root: Path) -> str:
    """The ``tiles.csv`` text: one row per tile, mapping its name to its source and position."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["tile", "source", "position_folder", "plane", "stage_x", "stage_y", "stage_z",
                "capture_time", "x_px", "y_px", "selected_by"])
    for t in tiles:
        st = t.stage or ("", "", "")
        w.writerow([t.name, t.source.relative_to(root).as_posix() if t.source.is_relative_to(root) else str(t.source),
                    t.position, t.plane, *[("%g" % v) if v != "" else "" for v in st],
                    t.time.isoformat() if t.time else "", f"{t.xy[0]:.3f}", f"{t.xy[1]:.3f}", t.reason])
    return out.getvalue()


def _failure_text(failed: list[FailedPosition]) -> str:
    lines = ["The scan did not complete. Positions without images and what their data.json says:", ""]
    for f in failed:
        lines.append(f"{f.folder.name}: {f.report}")
    return "\n".join(lines) + "\n"


def prepare_output_dir(out: Path, *, purpose: str) -> None:
    """Refuse to write into an existing folder that ofm-tiling did not make (it may be user data)."""
    if out.exists():
        if not out.is_dir():
            raise OfmTilingError(out, f"exists and is not a folder; choose another {purpose} folder")
        if not (out / MARKER).exists() and any(out.iterdir()):
            raise OfmTilingError(out, f"folder exists, is not empty and was not made by ofm-tiling; "
                                      f"choose another {purpose} folder")


def replace_dir(build: Callable[[Path], None], out: Path) -> None:
    """Build a folder under a temporary name beside `out`, then swap it into place.

    A run that fails leaves the previous `out` untouched and no temporary folder behind.
    """
    parent = out.parent
    tmp = parent / f".{out.name}.tmp-{os.getpid()}"
    old = parent / f".{out.name}.old-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / MARKER).write_text("Made by ofm-tiling; replaced on every run.\n")
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OfmTilingError(parent, f"cannot write here ({exc.strerror or exc})") from None
    try:
        build(tmp)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise OfmTilingError(exc.filename or out, f"cannot write ({exc.strerror or exc})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_edf_tile(tile: Tile, target: Path, *, workers: int | None = None, quality: int = 98) -> None:
    """Fuse a position's stack into one all-in-focus JPEG that keeps the chosen plane's EXIF."""
    from PIL import Image

    from .allinfocus import edf_from_paths

    fused = edf_from_paths(list(tile.stack), workers=workers or os.cpu_count() or 1)
    with Image.open(tile.source) as src:
        exif = src.info.get("exif", b"")
    # Near-lossless and without chroma subsampling, so the fused tile loses nothing visible to re-encoding.
    Image.fromarray(fused).save(target, format="JPEG", quality=quality, subsampling=0, exif=exif)
    tile.reason += "; all-in-focus fusion of the stack"


def collect(scan_dir: str | os.PathLike, *, out: str | os.PathLike | None = None, select: str = "tag",
            link: bool = False, strict: bool = False, grid: tuple[int, int] | None = None,
            overlap: float | None = None, skip: tuple[str | os.PathLike, ...] = (),
            focus: str = "central", workers: int | None = None) -> Collection:
    """Collect the image to use of every position into a Fiji-ready folder.

    Parameters
    ----------
    scan_dir : path
        The smart-stack scan folder.
    out : path, optional
        Where to write the tiles (default ``scan_dir/use``). Replaced as a whole on every run.
    select : {"tag", "sharpest"}
        ``"tag"`` uses the image tagged ``central_image`` (sharpest when tags are missing or
        contradictory); ``"sharpest"`` ignores tags.
    link : bool
        Hard-link the tiles instead of copying them. A program that saves over a linked tile in
        place changes the original image too.
    strict : bool
        Treat an incomplete scan or a damaged image as an error.
    grid, overlap : optional
        Lay tiles out on a ``(cols, rows)`` grid with this overlap fraction instead of using stage
        positions (for images without stage metadata).
    skip : paths
        Further folders to ignore (output folders).
    focus : {"central", "edf"}
        Copy the chosen plane of every position, or write an all-in-focus (extended depth of
        field) image fused from the whole stack, as a JPEG carrying the chosen plane's EXIF.
    workers : int, optional
        Threads for all-in-focus fusion (default: all cores).

    Returns
    -------
    Collection
    """
    if focus not in ("central", "edf"):
        raise OfmTilingError(None, f"--focus must be 'central' or 'edf', not {focus!r}")
    if select not in ("tag", "sharpest"):
        raise OfmTilingError(None, f"--select must be 'tag' or 'sharpest', not {select!r}")
    if grid is not None and (overlap is None or not 0 <= overlap < 1):
        raise OfmTilingError(None, "--grid needs --overlap F with 0 <= F < 1 (e.g. --overlap 0.3)")
    root = Path(scan_dir)
    out_dir = Path(out) if out is not None else root / "use"
    scan = read_scan(root, skip=(out_dir, *skip))
    # Folders ofm-tiling wrote itself are expected; only other folders are worth a note.
    notes = [f"{path}: ignored ({why})" for path, why in scan.ignored if why != OWN_OUTPUT]

    selections = [select_image(p, mode=select) for p in scan.positions]
    for position, s in zip(scan.positions, selections):
        notes.extend(_check_position(position, s, select))
        if s.fallback:
            notes.append(f"{position.name}: {s.reason} ({s.image.path.name})")
    if strict:
        if scan.failed:
            raise OfmTilingError(scan.failed[0].folder, f"scan is incomplete: {scan.failed[0].report}")
        damaged = [d for p in scan.positions for d in p.damaged]
        if damaged:
            raise OfmTilingError(damaged[0][0], damaged[0][1])

    tiles, positions, order, layout, tile_shape, pixel = plan_tiles(
        scan, selections, grid=grid, overlap=overlap)
    for f in scan.failed:
        notes.append(f"{f.folder.name}: skipped, no images ({f.report})")

    prepare_output_dir(out_dir, purpose="--out")

    def build(tmp: Path) -> None:
        for t in tiles:
            target = tmp / t.name
            if focus == "edf":
                write_edf_tile(t, target, workers=workers)
                continue
            if link:
                try:
                    os.link(t.source, target)
                    continue
                except OSError as exc:
                    raise OfmTilingError(target, f"cannot hard-link to {t.source} ({exc.strerror}); "
                                                 "collect without --link to copy instead") from None
            try:
                shutil.copyfile(t.source, target)
            except OSError as exc:
                if exc.filename in (str(t.source), t.source):
                    raise OfmTilingError(t.source, f"cannot read ({exc.strerror})") from None
                raise
        (tmp / TILE_CONFIGURATION).write_text(format_tile_configuration([t.name for t in tiles], positions))
        (tmp / TILES_CSV).write_text(tiles_csv(tiles, root), encoding="utf-8")
        if scan.failed:
            (tmp / FAILURE_REPORT).write_text(_failure_text(scan.failed), encoding="utf-8")

    replace_dir(build, out_dir)
    for note in notes:
        log.warning(note)
    return Collection(root, out_dir, tiles, tile_shape, positions, pixel, order, layout, scan.failed, notes)
