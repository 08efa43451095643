"""Collect: pick one image per position, order the tiles, lay them out, and write a Fiji-ready ``use/``.

The pipeline's first stage: scan → selection → order → layout → ``use/`` (tiles ``00.jpeg``…,
``TileConfiguration.txt``, ``tiles.csv``). Nothing outside the output folder is changed.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from .errors import OfmTilingError, OptionError
from .files import FolderSwap, ScanLock, check_output_dir, recover
from .focus import survey_stacks
from .layout import grid_positions, scan_order, stage_to_pixels
from .metadata import ImageMetadata
from .options import CollectOptions
from .scan import OWN_OUTPUT, FailedPosition, Scan, natural_key
from .selection import Selection, select_image
from .sources import TileList, TileSource, read_source
from .tilefiles import check_same_kind, read_tile_header, size_mismatch, use_suffix
from .usefolder import FAILURE_REPORT, TILE_CONFIGURATION, TILES_CSV, failure_text, tiles_csv, write_use

__all__ = ["Collection", "Tile", "TilePlan", "collect", "collect_into", "plan_tiles", "plan_listed", "focus_survey",
           "tile_name_width", "FAILURE_REPORT", "TILE_CONFIGURATION", "TILES_CSV", "failure_text", "tiles_csv",
           "write_use"]

log = logging.getLogger("ofm_tiling")



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
class TilePlan:
    """The tiles in order with their positions: what `plan_tiles` decides."""

    tiles: list[Tile]
    positions: np.ndarray
    order: str
    layout: str
    tile_shape: tuple[int, int]
    pixel_size_um: float | None


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
    kind: str = "smart-stack"  # what the input folder was, one of `ofm_tiling.sources.KINDS`
    pixel_type: str = "rgb8"  # one of `ofm_tiling.pixels.PIXEL_TYPES`; every tile has it

    @property
    def tile_configuration(self) -> Path:
        return self.use_dir / TILE_CONFIGURATION

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tiles]

    @property
    def paths(self) -> list[Path]:
        return [self.use_dir / t.name for t in self.tiles]


# --- consistency and layout ------------------------------------------------------------------

def _drop_foreign(scan: Scan, selections: list[Selection]) -> tuple[Scan, list[Selection], list[str]]:
    """Leave out folders whose images are not part of the scan, with a note each: another program's
    output saved inside the scan (e.g. Fiji's mosaic), recognised by images of another size than most
    positions' that carry no OFM metadata. A scan image of the wrong size stays an error."""
    sizes = [(s.image.width, s.image.height) for s in selections]
    if not sizes:
        return scan, selections, []
    common, count = Counter(sizes).most_common(1)[0]
    if count * 2 <= len(sizes) or count == len(sizes):
        return scan, selections, []  # no clear scan size, or nothing foreign: _check_sizes decides
    keep = [k for k, size in enumerate(sizes)
            if size == common or any(im.layout != "none" for im in scan.positions[k].images)]
    notes = [f"{scan.positions[k].where}: ignored (its images are {sizes[k][0]}x{sizes[k][1]}, the scan's are "
             f"{common[0]}x{common[1]}: not part of this scan)" for k in range(len(sizes)) if k not in keep]
    return replace(scan, positions=[scan.positions[k] for k in keep]), [selections[k] for k in keep], notes


def _check_sizes(selections: list[Selection]) -> tuple[int, int]:
    first = selections[0].image
    for s in selections[1:]:
        im = s.image
        if (im.width, im.height) != (first.width, first.height):
            raise size_mismatch(im.path, (im.width, im.height), first.path, (first.width, first.height))
    return first.height, first.width


def _check_calibration(selections: list[Selection]) -> tuple[np.ndarray, int] | None:
    found: tuple[ImageMetadata, np.ndarray] | None = None
    for s in selections:
        for im in [s.image] + [o for o in s.position.images if o is not s.image]:
            if im.csm is None:
                continue
            if found is None:
                found = im, im.csm
            elif im.csm_width != found[0].csm_width or not np.allclose(im.csm, found[1], rtol=1e-6, atol=1e-9):
                raise OfmTilingError(im.path, f"camera-stage mapping {np.round(im.csm, 6).tolist()} "
                                              f"disagrees with {np.round(found[1], 6).tolist()} in {found[0].path}")
            break  # one matrix per position is enough; stacks share the calibration
    return None if found is None else (found[1], found[0].csm_width or found[0].width)


def tile_name_width(n: int) -> int:
    """Digits in tile names: at least 2 (``00``–``99``), 3 from 101 tiles (``000``), and so on."""
    return max(2, len(str(max(n - 1, 0))))


def _stage_layout(selections: list[Selection], stages: list, tile_shape: tuple[int, int]) -> np.ndarray:
    """Pixel positions from stage positions and the camera-stage mapping (errors when missing)."""
    missing = [s for s, st in zip(selections, stages) if st is None]
    if missing:
        im = missing[0].image
        raise OfmTilingError(im.path, f"no stage position in the metadata ({im.problem or 'no stage key'}); "
                                      "lay the tiles out on a regular grid (grid and overlap)")
    calibration = _check_calibration(selections)
    if calibration is None:
        raise OfmTilingError(selections[0].image.path, "no camera-stage mapping in the metadata; "
                             "lay the tiles out on a regular grid (grid and overlap)")
    csm, csm_width = calibration
    return stage_to_pixels(np.array([st[:2] for st in stages]), csm, csm_width=csm_width, image_width=tile_shape[1])


def _tile_order(selections: list[Selection], times: list, xy_stage: np.ndarray | None,
                tile_shape: tuple[int, int]) -> tuple[list[int], str]:
    """Capture order: by capture time, else stage rows, else folder names (numbers by value)."""
    def by_name(k: int) -> list:
        return natural_key(selections[k].position.name)

    if all(t is not None for t in times):
        return sorted(range(len(selections)), key=lambda k: (times[k], by_name(k))), "capture time"
    if xy_stage is not None:
        return scan_order(xy_stage, tile_shape).tolist(), "stage scan order (no capture time in the metadata)"
    return (sorted(range(len(selections)), key=by_name),
            "folder names (no capture time or stage position in the metadata)")


def _grid_layout(n: int, grid: tuple[int, int], overlap: float | None, tile_shape: tuple[int, int],
                 root: Path, *, snake: bool = False) -> np.ndarray:
    cols, rows = grid
    if n > cols * rows:
        raise OfmTilingError(root, f"{n} positions do not fit the {cols}x{rows} grid")
    return grid_positions(n, cols=cols, rows=rows, tile_shape=tile_shape, overlap=float(overlap or 0), snake=snake)


def _grid_description(grid: tuple[int, int], overlap: float | None) -> str:
    return f"grid {grid[0]}x{grid[1]}, overlap {overlap:g} (grid)"


def plan_tiles(scan: Scan, selections: list[Selection], *, grid: tuple[int, int] | None = None,
               overlap: float | None = None, snake: bool = False) -> TilePlan:
    """Order the selected images, give them names and positions (no I/O)."""
    tile_shape = _check_sizes(selections)
    stages = [s.stage for s in selections]
    times = [s.time for s in selections]
    if grid is None:
        xy_stage = _stage_layout(selections, stages, tile_shape)
        layout = "stage positions through the camera-stage mapping"
    else:
        _check_calibration(selections)
        xy_stage, layout = None, _grid_description(grid, overlap)
    order, order_source = _tile_order(selections, times, xy_stage, tile_shape)
    n = len(selections)
    if xy_stage is not None:
        positions = xy_stage[order]
    else:
        assert grid is not None  # set when there is no stage layout
        positions = _grid_layout(n, grid, overlap, tile_shape, scan.root, snake=snake)
    width = tile_name_width(n)
    tiles = []
    for k, idx in enumerate(order):
        s = selections[idx]
        tiles.append(Tile(f"{k:0{width}d}.jpeg", s.image.path, s.position.name, s.plane, stages[idx], times[idx],
                          (float(positions[k, 0]), float(positions[k, 1])), s.reason,
                          tuple(im.path for im in s.stack), s.tagged_plane))
    pixel = next((s.image.um_per_px for s in selections if s.image.um_per_px), None)
    return TilePlan(tiles, positions, order_source, layout, tile_shape, pixel)


def plan_listed(listing: TileList, *, grid: tuple[int, int] | None = None, overlap: float | None = None) -> TilePlan:
    """Name and place the tiles of a TileConfiguration folder, in the file's order (no I/O).

    Positions are the file's, unless `grid` lays the tiles out row by row with `overlap`. Tiles
    keep their format in ``use/`` (``00.tif``, ``01.png``…; JPEGs are ``.jpeg`` as ever).
    """
    n, first = len(listing.tiles), listing.tiles[0].header
    if grid is None:
        positions, layout = listing.positions, f"positions in {listing.layout_file}"
    else:
        positions, layout = _grid_layout(n, grid, overlap, first.shape, listing.root), _grid_description(grid, overlap)
    width = tile_name_width(n)
    tiles = [Tile(f"{k:0{width}d}{use_suffix(t.header)}", t.path, t.name, 0, None, None,
                  (float(positions[k, 0]), float(positions[k, 1])), f"line {t.line} of {listing.layout_file.name}")
             for k, t in enumerate(listing.tiles)]
    return TilePlan(tiles, positions, f"line order in {listing.layout_file.name}", layout, first.shape, None)


def focus_survey(tiles: list[Tile], *, workers: int | None = None) -> list[dict]:
    """Focus verdict of every position's stack (for the report), see `ofm_tiling.focus.survey_stack`.

    Flags positions whose tagged plane is not the sharpest and stacks without a clear focus peak,
    so a user sees where autofocus failed. Stacks whose JPEG sizes settle the verdict are not
    decoded; the others are decoded at 1/8 resolution. Tiles without a stack (TileConfiguration
    folders) have no row.
    """
    tiles = [t for t in tiles if t.stack]
    surveys = survey_stacks([t.stack for t in tiles], [t.tagged_plane for t in tiles], workers=workers)
    rows = []
    for t, s in zip(tiles, surveys):
        v = s.verdict
        rows.append({"tile": t.name, "position": t.position, "used_plane": t.plane, "tagged_plane": t.tagged_plane,
                     "sharpest_plane": v.best, "prominence": round(float(v.prominence), 4),
                     "clear_peak": bool(v.clear_peak), "tagged_is_sharpest": v.tagged_is_sharpest,
                     "measure": s.measure, "curve": [round(float(c), 6) for c in s.curve], "message": v.message})
    return rows


# --- the stage -------------------------------------------------------------------------------

def _scan_notes(scan: Scan, selections: list[Selection], *, strict: bool) -> list[str]:
    """Notes on ignored folders, damaged files and failed positions; with `strict`, errors instead."""
    if strict:
        damaged_files = [(path, why) for path, why in scan.ignored if path.is_file()]  # flat scans
        if damaged_files:
            raise OfmTilingError(*damaged_files[0])
        if scan.failed:
            raise OfmTilingError(scan.failed[0].folder, f"scan is incomplete: {scan.failed[0].report}")
        damaged = [d for s in selections for d in s.damaged]
        if damaged:
            raise OfmTilingError(damaged[0][0], damaged[0][1])
    # Folders ofm-tiling wrote itself are expected; only other folders are worth a note.
    notes = [f"{path}: ignored ({why})" for path, why in scan.ignored if why != OWN_OUTPUT]
    notes += [n for s in selections for n in s.notes]
    for f in scan.failed:
        notes.append("\n".join([f"{f.folder.name}: skipped, no images; its data.json says:",
                                *("  " + line for line in f.details)]))
    return notes


def collect_into(folder: str | os.PathLike, scan: str | os.PathLike | Scan | TileSource, *, select: str = "tag",
                 link: bool = False, strict: bool = False, grid: tuple[int, int] | None = None,
                 overlap: float | None = None, skip: tuple[str | os.PathLike, ...] = (),
                 focus: str = "central", workers: int | None = None,
                 layout: str | os.PathLike | None = None) -> Collection:
    """Collect a scan into `folder`, an existing empty staging folder the caller puts in place.

    Reads the scan, selects, checks, orders and lays out the tiles, and writes them with their
    TileConfiguration into `folder`; nothing is swapped in and nothing is logged. The returned
    `Collection` has ``use_dir=folder``; a caller that renames the folder into place afterwards
    (`ofm_tiling.files.FolderSwap`) replaces ``use_dir`` with the final name
    (``dataclasses.replace``). Parameters as for `collect`; `skip` should name the final folder
    when it lies inside the scan. `scan` is the scan folder, or what `ofm_tiling.sources.read_source`
    or `ofm_tiling.scan.read_scan` read from it (then `skip` and `layout` are not used).
    """
    CollectOptions(select=select, focus=focus, grid=grid, overlap=overlap, layout=layout).check()
    folder = Path(folder)
    if isinstance(scan, Scan):
        scan = TileSource("flat" if any(p.label for p in scan.positions) else "smart-stack", scan.root, scan=scan)
    elif not isinstance(scan, TileSource):
        scan = read_source(scan, layout=layout, skip=(folder, *skip))
    if scan.tiles is not None:
        result = _collect_listed(folder, scan.tiles, grid=grid, overlap=overlap, link=link, focus=focus)
    else:
        assert scan.scan is not None
        result = _collect_scan(folder, scan.scan, select=select, link=link, strict=strict, grid=grid,
                               overlap=overlap, focus=focus, workers=workers)
    return replace(result, kind=scan.kind, notes=scan.notes + result.notes)


def _collect_scan(folder: Path, scan: Scan, *, select: str, link: bool, strict: bool, grid: tuple[int, int] | None,
                  overlap: float | None, focus: str, workers: int | None) -> Collection:
    """Smart-stack and flat scans: one image of every position, positions from the stage."""
    selections = [select_image(p, mode=select) for p in scan.positions]
    scan, selections, foreign = _drop_foreign(scan, selections)
    notes = foreign + _scan_notes(scan, selections, strict=strict)
    plan = plan_tiles(scan, selections, grid=grid, overlap=overlap)
    headers = [read_tile_header(t.source) for t in plan.tiles]
    check_same_kind(headers)
    write_use(folder, plan, root=scan.root, failed=scan.failed, focus=focus, link=link, workers=workers)
    if focus == "edf":  # the fused tiles are new images: their own header says what they hold
        headers = [read_tile_header(folder / plan.tiles[0].name)]
    return Collection(scan.root, folder, plan.tiles, plan.tile_shape, plan.positions, plan.pixel_size_um,
                      plan.order, plan.layout, scan.failed, notes, pixel_type=headers[0].pixel_type)


def _collect_listed(folder: Path, listing: TileList, *, grid: tuple[int, int] | None, overlap: float | None,
                    link: bool, focus: str) -> Collection:
    """TileConfiguration folders: every listed tile, positions from the file (or the grid)."""
    if focus == "edf":
        raise OptionError("focus", "'edf' needs a stack of images per position; "
                                   f"{listing.layout_file.name} names one image per tile")
    plan = plan_listed(listing, grid=grid, overlap=overlap)
    write_use(folder, plan, root=listing.root, link=link)
    alpha = [t.path.name for t in listing.tiles if t.header.note]
    notes = [f"{listing.root}: {len(alpha)} tile(s) have an alpha channel (e.g. {name}); it is ignored"
             for name in alpha[:1]]
    return Collection(listing.root, folder, plan.tiles, plan.tile_shape, plan.positions, None, plan.order,
                      plan.layout, [], notes, pixel_type=listing.tiles[0].header.pixel_type)


def collect(scan_dir: str | os.PathLike, *, out: str | os.PathLike | None = None, select: str = "tag",
            link: bool = False, strict: bool = False, grid: tuple[int, int] | None = None,
            overlap: float | None = None, skip: tuple[str | os.PathLike, ...] = (),
            focus: str = "central", workers: int | None = None,
            layout: str | os.PathLike | None = None) -> Collection:
    """Collect the image to use of every position into a Fiji-ready folder.

    Parameters
    ----------
    scan_dir : path
        The scan folder: a smart-stack scan, a flat OFM scan or a folder of tiles with a
        ``TileConfiguration.txt`` (see `ofm_tiling.sources`).
    out : path, optional
        Where to write the tiles (default ``scan_dir/use``). Replaced as a whole on every run.
    select : {"tag", "sharpest"}
        ``"tag"`` uses the image tagged ``central_image`` (sharpest when tags are missing,
        contradictory or damaged); ``"sharpest"`` ignores tags.
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
    layout : path, optional
        A TileConfiguration file kept elsewhere, laying out tiles of `scan_dir`: its tile names
        are looked up relative to `scan_dir`.

    Returns
    -------
    Collection
    """
    CollectOptions(select=select, focus=focus, grid=grid, overlap=overlap, layout=layout).check()
    out_dir = check_output_dir(Path(out) if out is not None else Path(scan_dir) / "use", parameter="out")
    source = read_source(scan_dir, layout=layout, skip=(out_dir, *skip))  # before anything is written
    with ScanLock(out_dir.parent):
        for note in recover(out_dir.parent, [out_dir]):
            log.warning(note)
        with FolderSwap([out_dir], journal_dir=out_dir.parent) as swap:
            result = collect_into(swap.staging(out_dir), source, select=select, link=link, strict=strict, grid=grid,
                                  overlap=overlap, focus=focus, workers=workers)
            swap.commit()
    log.info(f"found: {source.summary}")
    for note in result.notes:
        log.warning(note)
    return replace(result, use_dir=out_dir)
