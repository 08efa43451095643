"""What the viewer page shows besides the pixels: scan name and date, pixel size, tiles and links.

All of it goes into ``viewer-data.js`` (one assignment to ``window.OFM_VIEWER``), loaded by a
script tag, because a page opened from file:// may not fetch() a JSON file beside it.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import tifffile

from ..files import write_text_atomic
from ..layout_picture import GREEN, MAGENTA, RED, quality_colour
from .tiles import TILES, Pyramid

log = logging.getLogger("ofm_tiling")

#: The page's own files, shipped inside the package and copied as they are.
STATIC = ("index.html", "viewer.js", "viewer.css")
DATA_JS = "viewer-data.js"
FORMAT = "ofm-tiling viewer"
_UNITS_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


@dataclass
class OverlayTile:
    name: str
    x: float
    y: float
    w: int
    h: int


@dataclass
class OverlayLink:
    i: int
    j: int
    correlation: float | None
    accepted: bool
    status: str
    colour: str


@dataclass
class ViewerData:
    """Everything ``viewer-data.js`` holds."""

    title: str
    date: str
    width: int
    height: int
    tile: int
    levels: list[list[int]]
    pixel_size_um: float | None
    tiles: list[OverlayTile] = field(default_factory=list)
    links: list[OverlayLink] = field(default_factory=list)
    summary: str = ""
    format: str = FORMAT
    version: int = 1
    tile_folder: str = TILES


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def link_colour(link: dict) -> str:
    """Colour of a link as in layout.png: yellow to green by correlation, red or magenta if rejected."""
    status = str(link.get("status", ""))
    if not link.get("accepted", False):
        return _hex(MAGENTA if "solve" in status else RED)
    r, threshold = _number(link.get("correlation")), _number(link.get("threshold"))
    if r is None:
        return _hex(GREEN)
    return _hex(quality_colour(r, threshold if threshold is not None else math.nan))


def read_report(path: Path) -> dict | None:
    """The stitching report, or None with a warning if it is missing or unreadable (no overlay then)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.warning("%s: not found; the viewer shows no tile outlines or links", path)
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s: not readable (%s); the viewer shows no tile outlines or links", path, exc)
        return None
    return doc if isinstance(doc, dict) else None


def overlay(report: dict | None) -> tuple[list[OverlayTile], list[OverlayLink]]:
    """Tile outlines (top-left corner and size in mosaic pixels) and links from the report."""
    if report is None:
        return [], []
    extra = report.get("extra")
    shape = (extra.get("tile_shape") if isinstance(extra, dict) else None) or [0, 0]
    tiles, links = [], []
    try:
        h, w = int(shape[0]), int(shape[1])
        for t in report.get("tiles") or []:
            x, y = (float(v) for v in t["position"])
            tiles.append(OverlayTile(str(t.get("name", t.get("index", ""))), x, y, w, h))
        for link in report.get("links") or []:
            links.append(OverlayLink(int(link["i"]), int(link["j"]), _number(link.get("correlation")),
                                     bool(link.get("accepted", False)), str(link.get("status", "")),
                                     link_colour(link)))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        log.warning("stitching report: unexpected content (%s); the viewer shows no tile outlines or links", exc)
        return [], []
    links = [k for k in links if 0 <= k.i < len(tiles) and 0 <= k.j < len(tiles)]
    return tiles, links


def pixel_size_um(tif: tifffile.TiffFile) -> float | None:
    """Level-0 pixel size in micrometres from the OME metadata (PhysicalSizeX), if there is one."""
    try:
        pixels = tifffile.xml2dict(tif.ome_metadata or "")["OME"]["Image"]["Pixels"]
    except (KeyError, TypeError, ValueError):
        return None
    if isinstance(pixels, list):
        pixels = pixels[0]
    size = _number(pixels.get("PhysicalSizeX"))
    factor = _UNITS_TO_UM.get(str(pixels.get("PhysicalSizeXUnit", "µm")))
    return size * factor if size and size > 0 and factor else None


def image_name(tif: tifffile.TiffFile) -> str | None:
    try:
        image = tifffile.xml2dict(tif.ome_metadata or "")["OME"]["Image"]
    except (KeyError, TypeError, ValueError):
        return None
    if isinstance(image, list):
        image = image[0]
    name = image.get("Name")
    return str(name) if name else None


def scan_title_and_date(report: dict | None, mosaic: Path, name: str | None) -> tuple[str, str]:
    """Name and date of the scan: from its data.json (start of the scan) when the report names the
    scan folder and it is readable, else the mosaic's name and the time it was written."""
    extra = (report or {}).get("extra") or {}
    scan = extra.get("scan") if isinstance(extra, dict) else None
    title = name or (Path(scan).name if scan else mosaic.parent.name)
    if scan:
        try:
            data = json.loads((Path(scan) / "data.json").read_text(encoding="utf-8"))
            started = datetime.fromisoformat(str(data["started"]))
            return title, f"scanned {started:%Y-%m-%d %H:%M}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    try:
        return title, f"stitched {datetime.fromtimestamp(mosaic.stat().st_mtime):%Y-%m-%d %H:%M}"
    except OSError:
        return title, ""


def summary_text(report: dict | None) -> str:
    s = (report or {}).get("summary")
    if not isinstance(s, dict):
        return ""
    return (f"{s.get('tiles', '?')} tiles, {s.get('links_accepted', '?')} of {s.get('links', '?')} links accepted, "
            f"{s.get('groups', '?')} group(s)")


def data_script(data: ViewerData) -> str:
    """The text of ``viewer-data.js``."""
    text = json.dumps(asdict(data), ensure_ascii=True, separators=(",", ":"))
    return "window.OFM_VIEWER = " + text.replace("</", "<\\/") + ";\n"


def write_page(root: Path, data: ViewerData) -> None:
    """Write the page's files and its data into the viewer folder `root`."""
    static = resources.files(__package__).joinpath("static")
    for name in STATIC:
        write_text_atomic(root / name, static.joinpath(name).read_text(encoding="utf-8"))
    write_text_atomic(root / DATA_JS, data_script(data))


def viewer_data(tif: tifffile.TiffFile, mosaic: Path, pyramid: Pyramid, report: dict | None, *,
                title: str | None = None) -> ViewerData:
    """Gather what the page shows."""
    h, w = pyramid.levels[0]
    name, date = scan_title_and_date(report, mosaic, title or image_name(tif))
    tiles, links = overlay(report)
    return ViewerData(title=name, date=date, width=w, height=h, tile=pyramid.tile,
                      levels=[list(s) for s in pyramid.levels], pixel_size_um=pixel_size_um(tif),
                      tiles=tiles, links=links, summary=summary_text(report))


__all__ = ["ViewerData", "viewer_data", "write_page", "read_report", "overlay", "pixel_size_um", "link_colour"]
