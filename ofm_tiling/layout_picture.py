"""The layout picture, ``layout.png``: tiles where they went, links coloured by quality,
displacements from the stage, and the tiles whose position was corrected, for a person to check.

Drawn from a `ofm_tiling.placement.Placement`, so links look the same whichever backend
measured them. The JSON report with the same facts is `ofm_tiling.report`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .files import atomic_file
from .placement import Link, Placement
from .report import ACCEPTED, REJECTED_IN_REGISTRATION, dropped_in_solve, link_status

__all__ = ["GREEN", "MAGENTA", "RED", "draw_layout", "quality_colour"]

RGB = tuple[int, int, int]
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont

GREEN, _YELLOW, RED = (0, 150, 0), (225, 185, 0), (215, 30, 30)
MAGENTA, _ARROW, _TILE, _UNLINKED = (190, 0, 190), (20, 90, 230), (90, 90, 90), (240, 130, 0)
_CORRECTED = (0, 175, 200)  # cyan: no other mark uses it
# Light tile fills: the colours as seen through white, drawn opaque, which needs no full-size
# RGBA overlay to composite (5 image copies for tall scans).
_FILL_LINKED, _FILL_UNLINKED = (
    tuple(round((c * alpha + 255 * (255 - alpha)) / 255) for c in rgb)
    for rgb, alpha in (((120, 150, 200), 28), ((240, 130, 0), 40)))
_MARGIN, _LEGEND_H = 16, 122


@dataclass(frozen=True)
class _Canvas:
    """Maps mosaic pixels to picture pixels."""

    lo: np.ndarray        # mosaic point at the top-left margin
    scale: float          # picture pixels per mosaic pixel
    width: int
    height: int
    tile: np.ndarray      # (width, height) of a tile in mosaic pixels

    def px(self, p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, float) - self.lo) * self.scale + _MARGIN

    @property
    def tile_px(self) -> np.ndarray:
        return self.tile * self.scale

    @property
    def line_width(self) -> int:
        return max(1, int(round(float(self.tile_px.min()) / 60)))


@dataclass(frozen=True)
class _Tiles:
    """What the picture shows of the tiles, in the order of the positions."""

    stage: np.ndarray     # (N, 2) stage positions
    pos: np.ndarray       # (N, 2) final positions
    linked: np.ndarray    # (N,) bool: has an accepted link
    corrected: np.ndarray  # (N,) bool: position corrected after the backend placed it
    labels: list[str]


def draw_layout(path: str | os.PathLike, placement: Placement, *, names: Sequence[str] | None = None,
                stage_positions: np.ndarray, tile_shape: tuple[int, int], width: int = 1600,
                title: str | None = None) -> None:
    """Draw ``layout.png``: tiles at their final positions, links coloured by quality, displacements.

    Parameters
    ----------
    path : path-like
        Output PNG, written atomically.
    placement : Placement
        Positions, links (accepted ones from yellow, just above their threshold, to green, high
        correlation; rejected ones as thin red dashes; links dropped by the solve magenta) and
        corrections (tiles outlined in cyan), in the frame of `stage_positions`.
    names : sequence of str, optional
        Tile labels (default: the tile index).
    stage_positions : (N, 2) array_like
        Stage-predicted top-left corners ``(x, y)`` in pixels (see `ofm_tiling.report.report_frame`).
    tile_shape : (int, int)
        ``(height, width)`` of a tile in pixels.
    width : int
        Image width in pixels; the height follows the scan's aspect ratio (at most twice the width).
    title : str, optional
        A line above the legend (default: counts of tiles, links and corrections).
    """
    tiles = _tiles(placement, stage_positions, names)
    canvas = _canvas(tiles, tile_shape, int(width))
    image = Image.new("RGB", (canvas.width, canvas.height), "white")
    draw = ImageDraw.Draw(image)
    _draw_tiles(draw, canvas, tiles)
    _draw_links(draw, canvas, tiles, placement)
    magnify = _magnification(canvas, tiles)
    _draw_displacements(draw, canvas, tiles, magnify)
    _draw_labels(draw, canvas, tiles)
    _draw_legend(draw, canvas, title or _title(placement, tiles), magnify)
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG")


def _tiles(placement: Placement, stage_positions: np.ndarray, names: Sequence[str] | None) -> _Tiles:
    stage = np.asarray(stage_positions, float).reshape(-1, 2)
    pos = np.asarray(placement.positions, float).reshape(-1, 2)
    n = len(pos)
    if len(stage) != n or (names is not None and len(names) != n):
        raise ValueError(f"{len(stage)} stage positions and {'no' if names is None else len(names)} "
                         f"names for {n} placed tiles")
    dropped = dropped_in_solve(placement)
    linked = np.zeros(n, bool)
    for lk in placement.links:
        if link_status(lk, dropped) == ACCEPTED:
            linked[lk.i] = linked[lk.j] = True
    corrected = np.zeros(n, bool)
    corrected[[k for k in placement.corrections if 0 <= k < n]] = True
    labels = [str(names[k]) if names is not None else str(k) for k in range(n)]
    return _Tiles(stage, pos, linked, corrected, labels)


def _canvas(tiles: _Tiles, tile_shape: tuple[int, int], width: int) -> _Canvas:
    tile = np.array([float(tile_shape[1]), float(tile_shape[0])])
    both = np.vstack([tiles.stage, tiles.pos]) if len(tiles.pos) else np.zeros((1, 2))
    lo = both.min(axis=0)
    extent = both.max(axis=0) - lo + tile
    scale = min((width - 2 * _MARGIN) / extent[0], (2 * width - 2 * _MARGIN - _LEGEND_H) / extent[1])
    height = int(math.ceil(extent[1] * scale)) + 2 * _MARGIN + _LEGEND_H
    return _Canvas(lo, float(scale), width, height, tile)


def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap size
        return ImageFont.load_default()


def quality_colour(r: float, threshold: float) -> RGB:
    """Yellow at the link's threshold, green at high correlation."""
    if not math.isfinite(threshold):
        threshold = 0.1
    t = float(np.clip((r - threshold) / max(0.9 - threshold, 1e-6), 0, 1)) if math.isfinite(r) else 0.0
    red, green, blue = (int(round(y + (g - y) * t)) for y, g in zip(_YELLOW, GREEN))
    return red, green, blue


def _dashed(draw: ImageDraw.ImageDraw, p: np.ndarray, q: np.ndarray, colour: RGB, width: int,
            dash: float = 6) -> None:
    length = float(np.linalg.norm(q - p))
    n = max(1, int(length / dash))
    for k in range(0, n, 2):
        a, b = p + (q - p) * k / n, p + (q - p) * min(k + 1, n) / n
        draw.line([tuple(a), tuple(b)], fill=colour, width=width)


def _arrow(draw: ImageDraw.ImageDraw, p: np.ndarray, q: np.ndarray, colour: RGB, width: int = 2) -> None:
    draw.line([tuple(p), tuple(q)], fill=colour, width=width)
    d = q - p
    length = float(np.linalg.norm(d))
    if length < 2:
        draw.ellipse([q[0] - 2, q[1] - 2, q[0] + 2, q[1] + 2], fill=colour)
        return
    u = d / length
    head = min(8.0, 0.5 * length)
    left = q - head * u + 0.5 * head * np.array([-u[1], u[0]])
    right = q - head * u - 0.5 * head * np.array([-u[1], u[0]])
    draw.polygon([tuple(q), tuple(left), tuple(right)], fill=colour)


def _draw_tiles(draw: ImageDraw.ImageDraw, canvas: _Canvas, tiles: _Tiles) -> None:
    """Fills first (a later tile covers an earlier one), then every outline on top; corrected
    tiles last, in a thicker outline of their own colour."""
    boxes = [(tuple(a), tuple(a + canvas.tile_px)) for a in map(canvas.px, tiles.pos)]
    for box, linked in zip(boxes, tiles.linked):
        draw.rectangle(box, fill=_FILL_LINKED if linked else _FILL_UNLINKED)
    w = canvas.line_width
    for box, linked in zip(boxes, tiles.linked):
        draw.rectangle(box, outline=_TILE if linked else _UNLINKED, width=w)
    for box, corrected in zip(boxes, tiles.corrected):
        if corrected:
            draw.rectangle(box, outline=_CORRECTED, width=max(3, 2 * w))


def _draw_links(draw: ImageDraw.ImageDraw, canvas: _Canvas, tiles: _Tiles, placement: Placement) -> None:
    """Between tile centres: rejected links underneath, accepted ones on top, best last."""
    dropped = dropped_in_solve(placement)
    centre = canvas.tile / 2
    w = canvas.line_width

    def order(lk: Link) -> tuple[bool, float]:
        return link_status(lk, dropped) == ACCEPTED, lk.correlation if math.isfinite(lk.correlation) else -1

    for lk in sorted(placement.links, key=order):
        p, q = canvas.px(tiles.pos[lk.i] + centre), canvas.px(tiles.pos[lk.j] + centre)
        status = link_status(lk, dropped)
        if status == REJECTED_IN_REGISTRATION:
            _dashed(draw, p, q, RED, w)
        elif status != ACCEPTED:
            _dashed(draw, p, q, MAGENTA, max(2, w + 1))
        else:
            draw.line([tuple(p), tuple(q)], fill=quality_colour(lk.correlation, lk.threshold), width=max(2, 2 * w))


def _magnification(canvas: _Canvas, tiles: _Tiles) -> float:
    """Displacements are small next to a tile: the largest of 1, 2, 5, 10, 20, ... that keeps the
    longest arrow within 0.3 tile, so they can be seen at all."""
    if not len(tiles.pos):
        return 1.0
    big = float(np.max(np.linalg.norm(tiles.pos - tiles.stage, axis=1))) * canvas.scale
    room = 0.3 * float(canvas.tile_px[0])
    if not 0 < big < room:
        return 1.0
    target = room / big
    steps = [m * 10 ** e for e in range(int(math.log10(target)) + 1) for m in (1, 2, 5)]
    return float(max([s for s in steps if s <= target], default=1))


def _draw_displacements(draw: ImageDraw.ImageDraw, canvas: _Canvas, tiles: _Tiles, magnify: float) -> None:
    centre = canvas.tile / 2
    for stage, pos in zip(tiles.stage, tiles.pos):
        c = canvas.px(pos + centre)
        _arrow(draw, c - (pos - stage) * canvas.scale * magnify, c, _ARROW, width=canvas.line_width)


def _draw_labels(draw: ImageDraw.ImageDraw, canvas: _Canvas, tiles: _Tiles) -> None:
    font = _font(int(np.clip(canvas.tile_px[0] / 9, 9, 16)))
    max_chars = max(3, int(canvas.tile_px[0] / max(font.getlength("M"), 1)))
    for label, pos in zip(tiles.labels, tiles.pos):
        if len(label) > max_chars:
            label = "…" + label[-(max_chars - 1):]
        draw.text(tuple(canvas.px(pos) + 3), label, fill=(0, 0, 0), font=font)


def _title(placement: Placement, tiles: _Tiles) -> str:
    dropped = dropped_in_solve(placement)
    n_acc = sum(link_status(lk, dropped) == ACCEPTED for lk in placement.links)
    text = (f"{len(tiles.pos)} tiles, {n_acc} of {len(placement.links)} links accepted ({placement.backend}), "
            f"{int(np.sum(~tiles.linked))} tiles placed by the stage model only")
    n_corr = int(tiles.corrected.sum())
    return text + (f", {n_corr} positions corrected" if n_corr else "")


_LEGEND = (
    ("line", GREEN, "accepted, high correlation"),
    ("line", _YELLOW, "accepted, near its threshold"),
    ("dash", RED, "rejected in registration"),
    ("dash", MAGENTA, "dropped by the global solve"),
    ("box", _UNLINKED, "tile without accepted link"),
    ("arrow", _ARROW, "stage -> final position"),
    ("outline", _CORRECTED, "position corrected (see report)"),
)


def _draw_legend(draw: ImageDraw.ImageDraw, canvas: _Canvas, head: str, magnify: float) -> None:
    y0 = canvas.height - _LEGEND_H + 6
    draw.line([(0, y0 - 6), (canvas.width, y0 - 6)], fill=(200, 200, 200), width=1)
    small = _font(13)
    draw.text((_MARGIN, y0), head, fill=(0, 0, 0), font=small)
    col_w = (canvas.width - 2 * _MARGIN) / 3
    for k, (kind, colour, text) in enumerate(_LEGEND):
        x = _MARGIN + (k % 3) * col_w
        y = y0 + 24 + (k // 3) * 26
        p, q = np.array([x, y + 8.0]), np.array([x + 34, y + 8.0])
        if kind == "line":
            draw.line([tuple(p), tuple(q)], fill=colour, width=4)
        elif kind == "dash":
            _dashed(draw, p, q, colour, 2)
        elif kind in ("box", "outline"):
            fill = _FILL_UNLINKED if kind == "box" else _FILL_LINKED
            draw.rectangle([x, y, x + 34, y + 16], outline=colour, width=2 if kind == "box" else 3, fill=fill)
        else:
            _arrow(draw, p, q, colour)
            text = f"{text} (x{magnify:g})"
        draw.text((x + 42, y + 1), text, fill=(0, 0, 0), font=small)
