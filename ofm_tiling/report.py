"""What the stitcher decided and why: a JSON report and a layout picture for a person to check."""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .solve import Solution, apply_model

__all__ = ["link_table", "write_report", "draw_layout"]


def _num(v: Any) -> Any:
    """JSON-safe scalar: numpy to Python, NaN/inf to None."""
    if v is None:
        return None
    v = v.item() if isinstance(v, np.generic) else v
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _vec(v: Any) -> list | None:
    if v is None:
        return None
    out = [_num(float(x)) for x in np.asarray(v, float).ravel()]
    return None if any(x is None for x in out) else out


def _status(link: Any, rejected_in_solve: set) -> tuple[bool, str]:
    if not link.accepted:
        return False, "rejected in registration"
    if (link.i, link.j) in rejected_in_solve:
        return False, "rejected in global solve"
    return True, "accepted"


def link_table(links: Sequence[Any], solution: Solution | None = None, *,
               names: Sequence[str] | None = None) -> list[dict]:
    """One JSON-ready row per link.

    Parameters
    ----------
    links : sequence of Link
    solution : Solution, optional
        Adds residuals and marks links the global solve dropped.
    names : sequence of str, optional
        Tile names, added as ``name_i`` / ``name_j``.

    Returns
    -------
    list of dict
        Tiles, predicted and measured shift ``(dx, dy)``, deviation from the prediction,
        correlation and the threshold it had to reach, final status, the reason and the residual
        (px) at the solution. Missing values are None.
    """
    rejected = set(solution.rejected_in_solve) if solution is not None else set()
    rows = []
    for lk in links:
        ok, status = _status(lk, rejected)
        shift = None if lk.shift is None else np.asarray(lk.shift, float)
        pred = np.asarray(lk.predicted, float)
        reason = lk.reason
        residual = solution.residuals.get((lk.i, lk.j)) if solution is not None else None
        if status == "rejected in global solve":
            reason = ("disagrees with the other links" if residual is None
                      else f"disagrees with the other links by {residual:.2f} px")
        row = {
            "i": int(lk.i), "j": int(lk.j),
            "predicted_shift": _vec(pred),
            "measured_shift": _vec(shift),
            "deviation": None if shift is None else _num(float(np.linalg.norm(shift - pred))),
            "correlation": _num(float(lk.correlation)),
            "threshold": _num(float(getattr(lk, "threshold", float("nan")))),
            "fine_correlation": _num(float(getattr(lk, "fine_correlation", float("nan")))),
            "overlap": [int(v) for v in lk.overlap],
            "accepted": ok,
            "status": status,
            "reason": reason,
            "residual": _num(residual),
        }
        if names is not None:
            row["name_i"], row["name_j"] = names[lk.i], names[lk.j]
        rows.append(row)
    return rows


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_report(
    path: str | os.PathLike,
    *,
    names: Sequence[str],
    stage_positions: np.ndarray,
    solution: Solution,
    registration: Any,
    extra: dict | None = None,
) -> None:
    """Write ``stitching-report.json``: every tile, every link, the thresholds and a summary.

    Parameters
    ----------
    path : path-like
        Output file; written atomically (temporary name, then renamed).
    names : sequence of str
        Tile names (e.g. file names), in the order of the positions.
    stage_positions : (N, 2) array_like
        Stage-predicted top-left corners ``(x, y)`` in pixels.
    solution : Solution
        Result of :func:`ofm_tiling.solve.solve`.
    registration : Registration
        Result of :func:`ofm_tiling.register.register`.
    extra : dict, optional
        More JSON-ready information to store under ``"extra"`` (options, timings, versions).
    """
    stage = np.asarray(stage_positions, float)
    pos = np.asarray(solution.positions, float)
    if len(names) != len(stage) or len(pos) != len(stage):
        raise ValueError(f"{len(names)} names, {len(stage)} stage positions and {len(pos)} solved positions")
    links = list(registration.links)
    table = link_table(links, solution, names=names)
    group_of = {k: g for g, members in enumerate(solution.groups) for k in members}
    n_links = np.zeros(len(stage), int)
    for row in table:
        if row["accepted"]:
            n_links[row["i"]] += 1
            n_links[row["j"]] += 1
    model_pos = apply_model(np.asarray(solution.stage_model, float), stage) if len(stage) else stage
    tiles = []
    for k, name in enumerate(names):
        disp = pos[k] - stage[k]
        tiles.append({
            "index": k, "name": str(name),
            "stage_position": _vec(stage[k]),
            "position": _vec(pos[k]),
            "displacement": _vec(disp),
            "distance": _num(float(np.linalg.norm(disp))),
            "distance_from_stage_model": _num(float(np.linalg.norm(pos[k] - model_pos[k]))),
            "group": group_of.get(k),
            "accepted_links": int(n_links[k]),
        })
    kept = [r["residual"] for r in table if r["accepted"] and r["residual"] is not None]
    dist = [t["distance"] for t in tiles if t["distance"] is not None]
    null = np.asarray(registration.null_correlations, float)
    null_sig = np.asarray(getattr(registration, "null_significance", np.zeros(0)), float)
    summary = {
        "tiles": len(stage),
        "links": len(table),
        "links_accepted": sum(r["accepted"] for r in table),
        "links_rejected_in_registration": sum(r["status"] == "rejected in registration" for r in table),
        "links_rejected_in_solve": sum(r["status"] == "rejected in global solve" for r in table),
        "groups": len(solution.groups),
        "largest_group": max((len(g) for g in solution.groups), default=0),
        "tiles_without_accepted_link": [k for k in range(len(stage)) if n_links[k] == 0],
        "residual_median": _num(float(np.median(kept))) if kept else None,
        "residual_max": _num(float(np.max(kept))) if kept else None,
        "displacement_median": _num(float(np.median(dist))) if dist else None,
        "displacement_max": _num(float(np.max(dist))) if dist else None,
    }

    def quantiles(v: np.ndarray) -> dict | None:
        v = v[np.isfinite(v)]
        if len(v) == 0:
            return None
        q = np.quantile(v, [0.5, 0.9, 0.99, 1.0])
        return {"count": len(v), "median": _num(q[0]), "q90": _num(q[1]), "q99": _num(q[2]), "max": _num(q[3])}

    doc = {
        "format": "ofm-tiling stitching report",
        "version": 1,
        "summary": summary,
        "thresholds": {
            "correlation_for_median_overlap": _num(float(registration.threshold)),
            "significance": _num(float(getattr(registration, "significance_threshold", float("nan")))),
            "max_deviation_px": _num(float(registration.max_deviation)),
            "search_radius_px": _num(float(getattr(registration, "search_radius", float("nan")))),
            "coarse_scale": _num(getattr(registration, "coarse_scale", None)),
            "null_correlations": quantiles(null),
            "null_significance": quantiles(null_sig),
            "stage_correction": _vec(getattr(registration, "stage_correction", None)),
        },
        "stage_model": [_vec(row) for row in np.asarray(solution.stage_model, float)],
        "groups": [[int(k) for k in g] for g in solution.groups],
        "tiles": tiles,
        "links": table,
        "extra": extra or {},
    }
    text = json.dumps(doc, indent=1, allow_nan=False, default=_json_default)
    _atomic_write(path, lambda fh: fh.write(text + "\n"))


def _json_default(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_json_default(x) if isinstance(x, np.ndarray) else _num(x) for x in v]
    if isinstance(v, (np.generic,)):
        return _num(v)
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


# --------------------------------------------------------------------------------------------
# Layout picture

_GREEN, _YELLOW, _RED = (0, 150, 0), (225, 185, 0), (215, 30, 30)
_MAGENTA, _ARROW, _TILE, _UNLINKED = (190, 0, 190), (20, 90, 230), (90, 90, 90), (240, 130, 0)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one fixed bitmap size
        return ImageFont.load_default()


def _quality_colour(r: float, threshold: float) -> tuple[int, int, int]:
    """Yellow at the link's threshold, green at high correlation."""
    if not math.isfinite(threshold):
        threshold = 0.1
    t = float(np.clip((r - threshold) / max(0.9 - threshold, 1e-6), 0, 1)) if math.isfinite(r) else 0.0
    return tuple(int(round(y + (g - y) * t)) for y, g in zip(_YELLOW, _GREEN))


def _dashed(draw: ImageDraw.ImageDraw, p: np.ndarray, q: np.ndarray, colour, width: int, dash: float = 6) -> None:
    length = float(np.linalg.norm(q - p))
    n = max(1, int(length / dash))
    for k in range(0, n, 2):
        a, b = p + (q - p) * k / n, p + (q - p) * min(k + 1, n) / n
        draw.line([tuple(a), tuple(b)], fill=colour, width=width)


def _arrow(draw: ImageDraw.ImageDraw, p: np.ndarray, q: np.ndarray, colour, width: int = 2) -> None:
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


def draw_layout(
    path: str | os.PathLike,
    *,
    stage_positions: np.ndarray,
    positions: np.ndarray,
    tile_shape: tuple[int, int],
    links: Sequence[Any],
    names: Sequence[str] | None = None,
    width: int = 1600,
    rejected_in_solve: Sequence[tuple[int, int]] = (),
    title: str | None = None,
) -> None:
    """Draw ``layout.png``: tiles at their final positions, links coloured by quality, displacements.

    Parameters
    ----------
    path : path-like
        Output PNG, written atomically.
    stage_positions, positions : (N, 2) array_like
        Stage-predicted and final top-left corners ``(x, y)`` in pixels (same frame).
    tile_shape : (int, int)
        ``(height, width)`` of a tile in pixels.
    links : sequence of Link
        Drawn between tile centres: accepted ones from yellow (just above their threshold) to green
        (high correlation), rejected ones as thin red dashes, links dropped by the solve magenta.
    names : sequence of str, optional
        Tile labels (default: the tile index).
    width : int
        Image width in pixels; the height follows the scan's aspect ratio (at most twice the width).
    rejected_in_solve : sequence of (int, int)
        ``Solution.rejected_in_solve``.
    title : str, optional
        A line above the legend (default: counts of tiles and links).
    """
    stage = np.asarray(stage_positions, float).reshape(-1, 2)
    pos = np.asarray(positions, float).reshape(-1, 2)
    th, tw = float(tile_shape[0]), float(tile_shape[1])
    n = len(pos)
    width = int(width)
    margin, legend_h = 16, 96
    both = np.vstack([stage, pos]) if n else np.zeros((1, 2))
    lo = both.min(axis=0)
    extent = both.max(axis=0) - lo + (tw, th)
    scale = min((width - 2 * margin) / extent[0], (2 * width - 2 * margin - legend_h) / extent[1])
    height = int(math.ceil(extent[1] * scale)) + 2 * margin + legend_h

    def to_px(p: np.ndarray) -> np.ndarray:
        return (np.asarray(p, float) - lo) * scale + margin

    rejected = {tuple(map(int, k)) for k in rejected_in_solve}
    linked = np.zeros(n, bool)
    for lk in links:
        if lk.accepted and (lk.i, lk.j) not in rejected:
            linked[lk.i] = linked[lk.j] = True

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    # Light tile fills: the colours as seen through white (a later tile covers an earlier one),
    # drawn opaque, which needs no full-size RGBA overlay to composite (5 image copies for tall scans).
    fills = [tuple(round((c * alpha + 255 * (255 - alpha)) / 255) for c in rgb)
             for rgb, alpha in (((120, 150, 200), 28), ((240, 130, 0), 40))]
    for k in range(n):
        a = to_px(pos[k])
        b = a + np.array([tw, th]) * scale
        draw.rectangle([tuple(a), tuple(b)], fill=fills[0] if linked[k] else fills[1])
    line_w = max(1, int(round(min(tw, th) * scale / 60)))
    for k in range(n):
        a = to_px(pos[k])
        b = a + np.array([tw, th]) * scale
        draw.rectangle([tuple(a), tuple(b)], outline=_UNLINKED if not linked[k] else _TILE, width=line_w)

    centre = np.array([tw, th]) / 2
    # Rejected links underneath, accepted on top.
    order = sorted(links, key=lambda lk: (lk.accepted and (lk.i, lk.j) not in rejected, lk.correlation
                                          if math.isfinite(lk.correlation) else -1))
    for lk in order:
        p, q = to_px(pos[lk.i] + centre), to_px(pos[lk.j] + centre)
        if not lk.accepted:
            _dashed(draw, p, q, _RED, max(1, line_w))
        elif (lk.i, lk.j) in rejected:
            _dashed(draw, p, q, _MAGENTA, max(2, line_w + 1))
        else:
            colour = _quality_colour(lk.correlation, getattr(lk, "threshold", float("nan")))
            draw.line([tuple(p), tuple(q)], fill=colour, width=max(2, 2 * line_w))

    # Displacements are small next to a tile: magnify them so they can be seen at all.
    disp = np.linalg.norm(pos - stage, axis=1) if n else np.zeros(0)
    big = float(np.max(disp)) * scale if n else 0.0
    magnify = 1.0
    if 0 < big < 0.3 * tw * scale:  # largest of 1, 2, 5, 10, 20, ... keeping arrows within 0.3 tile
        target = 0.3 * tw * scale / big
        steps = [m * 10 ** e for e in range(int(math.log10(target)) + 1) for m in (1, 2, 5)]
        magnify = float(max([s for s in steps if s <= target], default=1))
    for k in range(n):
        c = to_px(pos[k] + centre)
        s = c - (pos[k] - stage[k]) * scale * magnify
        _arrow(draw, s, c, _ARROW, width=max(1, line_w))

    font = _font(int(np.clip(tw * scale / 9, 9, 16)))
    for k in range(n):
        label = str(names[k]) if names is not None else str(k)
        a = to_px(pos[k]) + 3
        max_chars = max(3, int(tw * scale / max(font.getlength("M"), 1)))
        if len(label) > max_chars:
            label = "…" + label[-(max_chars - 1):]
        draw.text(tuple(a), label, fill=(0, 0, 0), font=font)

    # Legend.
    y0 = height - legend_h + 6
    draw.line([(0, y0 - 6), (width, y0 - 6)], fill=(200, 200, 200), width=1)
    small = _font(13)
    n_acc = sum(1 for lk in links if lk.accepted and (lk.i, lk.j) not in rejected)
    head = title or (f"{n} tiles, {n_acc} of {len(links)} links accepted, "
                     f"{int(np.sum(~linked))} tiles placed by the stage model only")
    draw.text((margin, y0), head, fill=(0, 0, 0), font=small)
    items = [
        ("line", _GREEN, "accepted, high correlation"),
        ("line", _YELLOW, "accepted, near its threshold"),
        ("dash", _RED, "rejected in registration"),
        ("dash", _MAGENTA, "dropped by the global solve"),
        ("box", _UNLINKED, "tile without accepted link"),
        ("arrow", _ARROW, f"stage -> final position (x{magnify:g})"),
    ]
    col_w = (width - 2 * margin) / 3
    for k, (kind, colour, text) in enumerate(items):
        x = margin + (k % 3) * col_w
        y = y0 + 24 + (k // 3) * 26
        p, q = np.array([x, y + 8.0]), np.array([x + 34, y + 8.0])
        if kind == "line":
            draw.line([tuple(p), tuple(q)], fill=colour, width=4)
        elif kind == "dash":
            _dashed(draw, p, q, colour, 2)
        elif kind == "box":
            draw.rectangle([x, y, x + 34, y + 16], outline=colour, width=2, fill=(252, 230, 205))
        else:
            _arrow(draw, p, q, colour)
        draw.text((x + 42, y + 1), text, fill=(0, 0, 0), font=small)

    _atomic_write(path, lambda fh: image.save(fh, format="PNG"), mode="wb")
