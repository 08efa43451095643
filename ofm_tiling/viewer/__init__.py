"""A browser viewer for a finished mosaic: deep-zoom JPEG tiles and a page that needs nothing installed.

`write_viewer` makes ``viewer/`` in an output folder: ``index.html`` with its own script and style
(written for this project), ``viewer-data.js`` (what the page shows besides pixels) and
``tiles/<level>/<column>_<row>.jpg``. The page opens from file:// and from any static web server;
`serve` is such a server on 127.0.0.1.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tifffile

from ..errors import OfmTilingError
from ..files import FolderSwap, check_output_dir, recover
from ..options import check_quality
from ..outputs import MOSAIC, REPORT, VIEWER
from .page import read_report, viewer_data, write_page
from .serve import serve
from .tiles import QUALITY, Pyramid, write_tiles

__all__ = ["VIEWER", "MOSAIC", "REPORT", "ViewerResult", "write_viewer", "find_result", "is_current", "serve"]



@dataclass
class ViewerResult:
    folder: Path  #: the viewer folder (``output_dir/viewer``)
    index: Path  #: its ``index.html``
    pyramid: Pyramid  #: levels written
    tiles: int  #: number of JPEG tiles


def write_viewer(output_dir: str | os.PathLike, *, quality: int = QUALITY, title: str | None = None,
                 workers: int | None = None, progress: Callable[[int, int], object] | None = None) -> ViewerResult:
    """Write ``output_dir/viewer/`` for a finished result, replacing any earlier one as a whole.

    Parameters
    ----------
    output_dir : path-like
        An output folder holding ``mosaic.ome.tif`` (and ``stitching-report.json`` for the tile
        and link overlay). May be a staging folder not yet renamed into place: the page uses only
        relative paths.
    quality : int
        JPEG quality of the tiles, 1-100.
    title : str, optional
        Name shown on the page (default: the OME image name, i.e. the scan folder's name).
    workers : int, optional
        Threads compressing tiles (default: all cores).
    progress : callable, optional
        Called as ``progress(done, total)`` after every tile.

    Returns
    -------
    ViewerResult

    Notes
    -----
    Nothing outside ``output_dir/viewer`` is written; the new folder is built under a hidden
    staging name and renamed into place when complete. Callers running alongside other runs on
    the same folder hold a `ofm_tiling.files.ScanLock` on it.
    """
    check_quality(quality)
    out = Path(output_dir)
    if not out.is_dir():
        raise OfmTilingError(out, "output folder not found")
    mosaic = out / MOSAIC
    if not mosaic.is_file():
        raise OfmTilingError(out, f"holds no {MOSAIC} (give a finished ofm-tiling output folder)")
    target = check_output_dir(out / VIEWER, parameter="output")
    recover(out, [target])
    with FolderSwap([target], journal_dir=out) as swap:
        staging = swap.staging(target)
        pyramid = write_tiles(mosaic, staging, quality=quality, workers=workers, progress=progress)
        report = read_report(out / REPORT)
        with tifffile.TiffFile(mosaic) as tif:
            data = viewer_data(tif, mosaic, pyramid, report, title=title)
        write_page(staging, data)
        swap.commit()
    return ViewerResult(target, target / "index.html", pyramid, pyramid.tile_count)


def find_result(path: str | os.PathLike) -> Path:
    """The output folder for `path`: the folder itself if it holds the mosaic, else ``path/stitched``."""
    folder = Path(path)
    if not folder.is_dir():
        raise OfmTilingError(folder, "not found (give a scan folder or an ofm-tiling output folder)")
    for candidate in (folder, folder / "stitched"):
        if (candidate / MOSAIC).is_file():
            return candidate
    raise OfmTilingError(folder, f"holds no {MOSAIC} nor stitched/{MOSAIC}; run `ofm-tiling stitch` first")


def is_current(output_dir: str | os.PathLike) -> bool:
    """Whether ``output_dir/viewer`` is complete and newer than the mosaic it shows."""
    out = Path(output_dir)
    try:
        made = min((out / VIEWER / name).stat().st_mtime for name in ("index.html", "viewer-data.js"))
        return made >= (out / MOSAIC).stat().st_mtime
    except OSError:
        return False
