"""Fiji registers, ofm-tiling checks: Fiji's links and positions put through the built-in rules.

Fiji's global optimisation does not use the stage positions: a pair of blank-glass tiles that
happens to correlate forms a group of its own whose reference lands at (0, 0), hundreds of pixels
from its place, and a tile no link reaches is written at (0, 0) too (see the README's Fiji section).
So Fiji's pairwise links are judged like the built-in backend's (`ofm_tiling.linkrules`: links far
from the corrected stage prediction are dropped), solved with the built-in global solve
(`ofm_tiling.solve`: groups and unlinked tiles land where the corrected stage model puts them), and
Fiji's own positions are kept exactly wherever they agree with that solution. Every tile that had
to move is named.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..linkrules import deviation_bound, deviations
from ..placement import Criteria, Link, Placement
from ..solve import solve
from .results import FijiPair

__all__ = ["check_fiji", "fiji_links"]

#: How far (px) Fiji's position may be from the checked one and still be kept as Fiji gave it.
AGREE_PX = 1.0


def _search_limit(overlap: tuple[int, int]) -> float:
    """How far (px) from the stage prediction the built-in search would look for this overlap."""
    return 0.75 * min(overlap) * math.sqrt(2)


def _overlap(predicted: np.ndarray, tile_shape: tuple[int, int]) -> tuple[int, int]:
    h, w = tile_shape
    return int(max(0.0, w - abs(predicted[0]))), int(max(0.0, h - abs(predicted[1])))


def fiji_links(names: Sequence[str], stage: np.ndarray, tile_shape: tuple[int, int],
               pairs: Sequence[FijiPair], threshold: float) -> list[Link]:
    """Fiji's compared pairs as `Link`s: kept when R reaches Fiji's regression `threshold`."""
    index = {name: k for k, name in enumerate(names)}
    links = []
    for pair in pairs:
        if pair.a not in index or pair.b not in index or pair.a == pair.b:
            continue
        i, j, shift = index[pair.a], index[pair.b], np.array(pair.shift, float)
        if i > j:
            i, j, shift = j, i, -shift
        predicted = stage[j] - stage[i]
        kept = bool(pair.correlation >= threshold)
        reason = (f"Fiji kept it (R {pair.correlation:.3f} >= {threshold:.2f})" if kept
                  else f"Fiji did not use it (R {pair.correlation:.3f} < {threshold:.2f})")
        links.append(Link(i, j, (float(predicted[0]), float(predicted[1])), (float(shift[0]), float(shift[1])),
                          float(pair.correlation), kept, reason, _overlap(predicted, tile_shape),
                          threshold=float(threshold)))
    return sorted(links, key=lambda lk: (lk.i, lk.j))


def implied_links(names: Sequence[str], stage: np.ndarray, tile_shape: tuple[int, int],
                  registered: Mapping[str, tuple[float, float]]) -> list[Link]:
    """Without Fiji's log: the shifts Fiji's positions imply between tiles the stage says overlap."""
    links = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            predicted = stage[j] - stage[i]
            overlap = _overlap(predicted, tile_shape)
            if min(overlap) <= 0 or names[i] not in registered or names[j] not in registered:
                continue
            shift = np.subtract(registered[names[j]], registered[names[i]])
            # A tile Fiji put at its group's origin implies shifts of hundreds of px: not evidence.
            off = float(np.linalg.norm(shift - predicted))
            plausible = off <= _search_limit(overlap)
            reason = ("implied by Fiji's positions (its log was not available)" if plausible
                      else f"implied by Fiji's positions, {off:.0f} px from the stage prediction")
            links.append(Link(i, j, (float(predicted[0]), float(predicted[1])), (float(shift[0]), float(shift[1])),
                              float("nan"), plausible, reason, overlap))
    return links


def drop_deviating(links: list[Link], tile_shape: tuple[int, int]) -> Criteria:
    """Reject (in place) kept links far from the corrected stage prediction; returns the criteria."""
    kept = [lk for lk in links if lk.accepted and lk.shift is not None]
    if not kept:
        return Criteria(threshold=links[0].threshold if links else float("nan"))
    pred = np.array([lk.predicted for lk in kept], float)
    measured = np.array([lk.shift for lk in kept], float)
    low = 0.01 * max(tile_shape)
    high = max(low, float(np.median([_search_limit(lk.overlap) for lk in kept])))
    bound = deviation_bound(pred, measured, low=low, high=high)
    for lk, dev in zip(kept, deviations(pred, measured, bound.stage_correction)):
        if dev > bound.max_deviation:
            lk.accepted = False
            lk.reason = (f"Fiji kept it (R {lk.correlation:.3f}) but it is {dev:.0f} px from the stage "
                         f"prediction (bound {bound.max_deviation:.0f} px)")
    return Criteria(threshold=kept[0].threshold, max_deviation=bound.max_deviation,
                    stage_correction=bound.stage_correction)


def _group_offset(members: Sequence[int], solved: np.ndarray, fiji: np.ndarray) -> np.ndarray | None:
    have = [k for k in members if np.isfinite(fiji[k]).all()]
    return np.mean(solved[have] - fiji[have], axis=0) if have else None


def keep_fiji_where_agreeing(solved: np.ndarray, fiji: np.ndarray, groups: Sequence[Sequence[int]],
                             agree_px: float = AGREE_PX) -> np.ndarray:
    """The solved positions, with Fiji's own (moved by one offset per group) where they agree.

    `fiji` holds NaN for tiles Fiji did not place. A group of two or more tiles takes Fiji's
    positions when all of them lie within `agree_px` of the solution after removing the group's
    mean offset; then every tile within `agree_px` of Fiji's position moved by the main group's
    offset takes exactly that, so tiles that agree keep Fiji's relative positions.
    """
    final = np.array(solved, float)
    for members in groups:
        off = _group_offset(members, solved, fiji)
        if len(members) >= 2 and off is not None and np.isfinite(fiji[list(members)]).all():
            candidate = fiji[list(members)] + off
            if np.abs(candidate - solved[list(members)]).max() <= agree_px:
                final[list(members)] = candidate
    main = _group_offset(groups[0], final, fiji) if groups else None
    if main is not None:
        near = np.isfinite(fiji).all(axis=1) & (np.linalg.norm(fiji + main - final, axis=1) <= agree_px)
        final[near] = fiji[near] + main
    return final


def _why_moved(k: int, moved: float, fiji_xy: np.ndarray, group: Sequence[int]) -> str:
    if not np.isfinite(fiji_xy).all():
        return "Fiji did not place it; placed by the corrected stage model"
    where = f"Fiji wrote it at ({fiji_xy[0]:.1f}, {fiji_xy[1]:.1f}), {moved:.0f} px from the checked position"
    if len(group) == 1:
        return f"no kept link joins it to another tile (blank glass?): {where}; placed by the corrected stage model"
    return (f"in a group of {len(group)} tiles with no kept link to the main group: {where}; the group is "
            "placed by the corrected stage model")


def _corrections(names: Sequence[str], final: np.ndarray, fiji: np.ndarray, groups: Sequence[Sequence[int]],
                 agree_px: float) -> dict[int, str]:
    main = _group_offset(groups[0], final, fiji) if groups else None
    group_of = {k: g for g in groups for k in g}
    out = {}
    for k in range(len(names)):
        if main is None or not np.isfinite(fiji[k]).all():
            out[k] = _why_moved(k, math.nan, fiji[k], group_of.get(k, [k]))
            continue
        moved = float(np.linalg.norm(final[k] - fiji[k] - main))
        if moved > agree_px:
            if len(group_of.get(k, [k])) > 1 and group_of[k] is groups[0]:
                out[k] = f"Fiji's position is {moved:.1f} px from the one the checked links give"
            else:
                out[k] = _why_moved(k, moved, fiji[k], group_of.get(k, [k]))
    return out


def _notes(names: Sequence[str], links: Sequence[Link], placement: Placement, from_log: bool) -> list[str]:
    notes = []
    if not from_log:
        notes.append("Fiji's log was not available: its links are the shifts implied by its positions")
    dropped = [lk for lk in links if not lk.accepted and "stage prediction" in lk.reason]
    if dropped:
        pairs = ", ".join(f"{names[lk.i]}-{names[lk.j]}" for lk in dropped)
        notes.append(f"{len(dropped)} of Fiji's links disagree with the stage positions beyond "
                     f"{placement.criteria.max_deviation:.0f} px and were not used: {pairs}")
    if placement.rejected_in_solve:
        notes.append(f"the global solve dropped {len(placement.rejected_in_solve)} of Fiji's links that "
                     "disagreed with the others")
    if placement.corrections:
        notes.append(f"corrected {len(placement.corrections)} tile(s) Fiji misplaced: "
                     + "; ".join(f"{names[k]}: {why}" for k, why in sorted(placement.corrections.items())))
    return notes


def check_fiji(names: Sequence[str], stage_positions: np.ndarray, tile_shape: tuple[int, int],
               registered: Mapping[str, tuple[float, float]], pairs: Sequence[FijiPair] | None, *,
               threshold: float = 0.30, agree_px: float = AGREE_PX) -> Placement:
    """Check Fiji's registration of one scan against the stage and place every tile.

    Parameters
    ----------
    names : sequence of str
        Tile names, in the order of `stage_positions`.
    stage_positions : (N, 2) array
        Stage-derived top-left ``(x, y)`` in pixels.
    tile_shape : (int, int)
        Tile ``(height, width)``.
    registered : mapping of str to (x, y)
        Fiji's registered positions (`read_registered`); tiles it did not place may be absent.
    pairs : sequence of FijiPair, or None
        The pairs in Fiji's log (`read_log_pairs`); None or empty when the log is not available
        (the shifts implied by Fiji's positions are checked instead).
    threshold : float
        Fiji's regression threshold (the R a pair needed to be linked).
    agree_px : float
        Largest distance (px) at which Fiji's position counts as agreeing with the checked one.

    Returns
    -------
    Placement
        In the frame of the stage positions; ``backend="fiji"``; `corrections` names every tile
        that did not keep Fiji's position, and `notes` say what was changed and why.
    """
    stage = np.asarray(stage_positions, float).reshape(-1, 2)
    links = (fiji_links(names, stage, tile_shape, pairs, threshold) if pairs
             else implied_links(names, stage, tile_shape, registered))
    criteria = drop_deviating(links, tile_shape)
    solution = solve(stage, links)
    fiji = np.array([registered.get(n, (math.nan, math.nan)) for n in names], float).reshape(-1, 2)
    final = keep_fiji_where_agreeing(solution.positions, fiji, solution.groups, agree_px)
    residuals = {(lk.i, lk.j): float(np.linalg.norm(final[lk.j] - final[lk.i] - np.asarray(lk.shift)))
                 for lk in links if lk.accepted and lk.shift is not None}
    placement = Placement(final, links, criteria, solution.stage_model, solution.groups, residuals,
                          solution.rejected_in_solve, _corrections(names, final, fiji, solution.groups, agree_px),
                          backend="fiji")
    placement.notes = _notes(names, links, placement, bool(pairs))
    return placement
