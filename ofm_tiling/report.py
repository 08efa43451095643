"""What the stitcher decided and why, as JSON: ``stitching-report.json``.

The report is written from a `ofm_tiling.placement.Placement`, whichever backend made it, so the
links are listed the same way for the built-in registration and for Fiji (predicted and measured
shift, correlation, threshold, kept or why not, residual), and every tile whose position was
corrected after the backend placed it says why. The layout picture is `ofm_tiling.layout_picture`.

Format ``"ofm-tiling stitching report"``, version 2 (version 1 had no ``backend``, ``notes``,
per-tile ``correction`` nor ``summary.tiles_corrected``; everything else is unchanged).
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np

from .files import write_text_atomic
from .placement import Criteria, Link, Placement, apply_model

__all__ = ["FORMAT", "VERSION", "ReportFrame", "report_frame", "dropped_in_solve", "link_status",
           "link_table", "tile_table", "report_document", "write_report"]

FORMAT = "ofm-tiling stitching report"
VERSION = 2

ACCEPTED = "accepted"
REJECTED_IN_REGISTRATION = "rejected in registration"
REJECTED_IN_SOLVE = "rejected in global solve"


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


class ReportFrame(NamedTuple):
    """A placement and stage positions in one frame, ready for the report and the picture."""

    placement: Placement
    stage_positions: np.ndarray


def report_frame(placement: Placement, stage_positions: np.ndarray) -> ReportFrame:
    """Move the stage positions by the mean displacement, so displacements exclude the one global
    shift between stage and placement, and rewrite the stage model for the moved positions.

    Parameters
    ----------
    placement : Placement
        Its ``stage_model`` maps `stage_positions` to its positions (as a backend returns it, and
        after `Placement.shifted`).
    stage_positions : (N, 2) array_like
        The stage-predicted top-left corners ``(x, y)`` in pixels.
    """
    stage = np.asarray(stage_positions, float).reshape(-1, 2)
    if len(stage) != len(placement.positions):
        raise ValueError(f"{len(stage)} stage positions but {len(placement.positions)} placed tiles")
    shift = (np.asarray(placement.positions, float) - stage).mean(axis=0) if len(stage) else np.zeros(2)
    model = np.array(placement.stage_model, dtype=float)
    model[:, 2] -= model[:, :2] @ shift
    return ReportFrame(replace(placement, stage_model=model), stage + shift)


def dropped_in_solve(placement: Placement) -> set[tuple[int, int]]:
    """The links the placement's global solve dropped, as ``(i, j)`` pairs."""
    return {(int(i), int(j)) for i, j in placement.rejected_in_solve}


def link_status(link: Link, dropped: set[tuple[int, int]]) -> str:
    """``"accepted"``, ``"rejected in registration"`` or ``"rejected in global solve"``."""
    if not link.accepted:
        return REJECTED_IN_REGISTRATION
    return REJECTED_IN_SOLVE if (link.i, link.j) in dropped else ACCEPTED


def link_table(placement: Placement, *, names: Sequence[str] | None = None) -> list[dict]:
    """One JSON-ready row per link of `placement`, whichever backend measured it.

    Parameters
    ----------
    placement : Placement
        Its links, residuals and the links its solve dropped.
    names : sequence of str, optional
        Tile names, added as ``name_i`` / ``name_j``.

    Returns
    -------
    list of dict
        Tiles, predicted and measured shift ``(dx, dy)``, deviation from the prediction,
        correlation (Fiji's R for the Fiji backend) and the threshold it had to reach, final
        status, the reason and the residual (px) at the final positions. Missing values are None.
    """
    dropped = dropped_in_solve(placement)
    rows = []
    for lk in placement.links:
        status = link_status(lk, dropped)
        shift = None if lk.shift is None else np.asarray(lk.shift, float)
        pred = np.asarray(lk.predicted, float)
        residual = placement.residuals.get((lk.i, lk.j))
        reason = lk.reason
        if status == REJECTED_IN_SOLVE:
            reason = ("disagrees with the other links" if residual is None
                      else f"disagrees with the other links by {residual:.2f} px")
        row = {
            "i": int(lk.i), "j": int(lk.j),
            "predicted_shift": _vec(pred),
            "measured_shift": _vec(shift),
            "deviation": None if shift is None else _num(float(np.linalg.norm(shift - pred))),
            "correlation": _num(float(lk.correlation)),
            "threshold": _num(float(lk.threshold)),
            "fine_correlation": _num(float(lk.fine_correlation)),
            "overlap": [int(v) for v in lk.overlap],
            "accepted": status == ACCEPTED,
            "status": status,
            "reason": reason,
            "residual": _num(residual),
        }
        if names is not None:
            row["name_i"], row["name_j"] = names[lk.i], names[lk.j]
        rows.append(row)
    return rows


def tile_table(placement: Placement, stage_positions: np.ndarray, names: Sequence[str],
               links: Sequence[dict]) -> list[dict]:
    """One JSON-ready row per tile: where the stage put it, where it went, its group and links,
    and the correction applied to it (None when its position is the backend's own)."""
    stage = np.asarray(stage_positions, float).reshape(-1, 2)
    pos = np.asarray(placement.positions, float).reshape(-1, 2)
    group_of = {k: g for g, members in enumerate(placement.groups) for k in members}
    n_links = np.zeros(len(stage), int)
    for row in links:
        if row["accepted"]:
            n_links[row["i"]] += 1
            n_links[row["j"]] += 1
    model_pos = apply_model(placement.stage_model, stage) if len(stage) else stage
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
            "correction": placement.corrections.get(k),
        })
    return tiles


def _summary(placement: Placement, tiles: list[dict], links: list[dict]) -> dict:
    kept = [r["residual"] for r in links if r["accepted"] and r["residual"] is not None]
    dist = [t["distance"] for t in tiles if t["distance"] is not None]
    return {
        "tiles": len(tiles),
        "links": len(links),
        "links_accepted": sum(r["accepted"] for r in links),
        "links_rejected_in_registration": sum(r["status"] == REJECTED_IN_REGISTRATION for r in links),
        "links_rejected_in_solve": sum(r["status"] == REJECTED_IN_SOLVE for r in links),
        "groups": len(placement.groups),
        "largest_group": max((len(g) for g in placement.groups), default=0),
        "tiles_without_accepted_link": [t["index"] for t in tiles if t["accepted_links"] == 0],
        "tiles_corrected": sorted(int(k) for k in placement.corrections),
        "residual_median": _num(float(np.median(kept))) if kept else None,
        "residual_max": _num(float(np.max(kept))) if kept else None,
        "displacement_median": _num(float(np.median(dist))) if dist else None,
        "displacement_max": _num(float(np.max(dist))) if dist else None,
    }


def _quantiles(values: np.ndarray) -> dict | None:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return None
    q = np.quantile(v, [0.5, 0.9, 0.99, 1.0])
    return {"count": len(v), "median": _num(q[0]), "q90": _num(q[1]), "q99": _num(q[2]), "max": _num(q[3])}


def _thresholds(criteria: Criteria) -> dict:
    return {
        "correlation_for_median_overlap": _num(float(criteria.threshold)),
        "significance": _num(float(criteria.significance_threshold)),
        "max_deviation_px": _num(float(criteria.max_deviation)),
        "search_radius_px": _num(float(criteria.search_radius)),
        "coarse_scale": _num(criteria.coarse_scale),
        "null_correlations": _quantiles(criteria.null_correlations),
        "null_significance": _quantiles(criteria.null_significance),
        "stage_correction": _vec(criteria.stage_correction),
    }


def report_document(placement: Placement, *, names: Sequence[str], stage_positions: np.ndarray,
                    extra: dict | None = None) -> dict:
    """The report as a JSON-ready dict (see :func:`write_report`)."""
    stage = np.asarray(stage_positions, float).reshape(-1, 2)
    n = len(placement.positions)
    if len(names) != len(stage) or n != len(stage):
        raise ValueError(f"{len(names)} names, {len(stage)} stage positions and {n} placed tiles")
    links = link_table(placement, names=names)
    tiles = tile_table(placement, stage, names, links)
    return {
        "format": FORMAT,
        "version": VERSION,
        "backend": placement.backend,
        "notes": [str(note) for note in placement.notes],
        "summary": _summary(placement, tiles, links),
        "thresholds": _thresholds(placement.criteria),
        "stage_model": [_vec(row) for row in np.asarray(placement.stage_model, float)],
        "groups": [[int(k) for k in g] for g in placement.groups],
        "tiles": tiles,
        "links": links,
        "extra": extra or {},
    }


def write_report(path: str | os.PathLike, placement: Placement, *, names: Sequence[str],
                 stage_positions: np.ndarray, extra: dict | None = None) -> None:
    """Write ``stitching-report.json``: every tile, every link, the thresholds and a summary.

    Parameters
    ----------
    path : path-like
        Output file; written atomically (temporary name, then renamed).
    placement : Placement
        What the backend returned (after any checks), in the frame of `stage_positions`
        (see :func:`report_frame`).
    names : sequence of str
        Tile names (e.g. file names), in the order of the positions.
    stage_positions : (N, 2) array_like
        Stage-predicted top-left corners ``(x, y)`` in pixels, mapped to the placement's
        positions by its ``stage_model``.
    extra : dict, optional
        More JSON-ready information to store under ``"extra"`` (options, timings, versions).
    """
    doc = report_document(placement, names=names, stage_positions=stage_positions, extra=extra)
    write_text_atomic(path, json.dumps(doc, indent=1, allow_nan=False, default=_json_default) + "\n")


def _json_default(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_json_default(x) if isinstance(x, np.ndarray) else _num(x) for x in v]
    if isinstance(v, (np.generic,)):
        return _num(v)
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")
