"""The ``use/`` folder's contents: the tiles (copies, hard links or all-in-focus fusions),
``TileConfiguration.txt``, ``tiles.csv`` and the failure report of an incomplete scan.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import OfmTilingError
from .tileconfig import format_tile_configuration

if TYPE_CHECKING:
    from .collect import Tile, TilePlan
    from .scan import FailedPosition

TILE_CONFIGURATION = "TileConfiguration.txt"
TILES_CSV = "tiles.csv"
FAILURE_REPORT = "scan-failure.txt"


def tiles_csv(tiles: list[Tile], root: Path) -> str:
    """The ``tiles.csv`` text: one row per tile, mapping its name to its source and position."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["tile", "source", "position_folder", "plane", "stage_x", "stage_y", "stage_z",
                "capture_time", "x_px", "y_px", "selected_by"])
    for t in tiles:
        st = t.stage or ("", "", "")
        w.writerow([t.name, t.source.relative_to(root).as_posix() if t.source.is_relative_to(root) else str(t.source),
                    t.position, t.plane, *[f"{v:g}" if isinstance(v, float) else "" for v in st],
                    t.time.isoformat() if t.time else "", f"{t.xy[0]:.3f}", f"{t.xy[1]:.3f}", t.reason])
    return out.getvalue()


def failure_text(failed: list[FailedPosition]) -> str:
    """The ``scan-failure.txt`` text: every failed position's data.json, whole and readable."""
    lines = ["The scan did not complete. Positions without images and what their data.json says:"]
    for f in failed:
        lines += ["", f"{f.folder.name}/data.json:", *("  " + line for line in f.details)]
    return "\n".join(lines) + "\n"


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


def _copy_tile(tile: Tile, target: Path, *, link: bool) -> None:
    if link:
        try:
            os.link(tile.source, target)
            return
        except OSError as exc:
            raise OfmTilingError(target, f"cannot hard-link to {tile.source} ({exc.strerror}); "
                                         "collect without link to copy instead") from None
    try:
        shutil.copyfile(tile.source, target)
    except OSError as exc:
        if exc.filename in (str(tile.source), tile.source):
            raise OfmTilingError(tile.source, f"cannot read ({exc.strerror})") from None
        raise OfmTilingError(target, f"cannot write ({exc.strerror})") from None


def write_use(folder: Path, plan: TilePlan, *, root: Path, failed: list[FailedPosition] | None = None,
              focus: str = "central", link: bool = False, workers: int | None = None) -> None:
    """Write the tiles, ``TileConfiguration.txt``, ``tiles.csv`` and any failure report into `folder`.

    Sources are named in ``tiles.csv`` relative to `root` (the scan folder).
    """
    for t in plan.tiles:
        if focus == "edf":
            write_edf_tile(t, folder / t.name, workers=workers)
        else:
            _copy_tile(t, folder / t.name, link=link)
    try:
        (folder / TILE_CONFIGURATION).write_text(format_tile_configuration([t.name for t in plan.tiles],
                                                                           plan.positions), encoding="utf-8")
        (folder / TILES_CSV).write_text(tiles_csv(plan.tiles, root), encoding="utf-8")
        if failed:
            (folder / FAILURE_REPORT).write_text(failure_text(failed), encoding="utf-8")
    except OSError as exc:
        raise OfmTilingError(exc.filename or folder, f"cannot write ({exc.strerror})") from None
