"""Global placement against ground truth, from links generated out of known positions."""
from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import placement_errors

from ofm_tiling.placement import apply_model
from ofm_tiling.register import Link
from ofm_tiling.solve import Solution, solve

TILE = (2464, 3280)
STEP = np.array([2296.0, 1725.0])     # 30 % overlap


def grid(rows, cols):
    return np.array([(c * STEP[0], r * STEP[1]) for r in range(rows) for c in range(cols)])


def neighbour_pairs(rows, cols, skip=()):
    pairs = []
    for r in range(rows):
        for c in range(cols):
            k = r * cols + c
            for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < rows and 0 <= cc < cols:
                    j = rr * cols + cc
                    if k not in skip and j not in skip:
                        pairs.append((min(k, j), max(k, j)))
    return pairs


def links_from_truth(pairs, stage, truth, *, noise=0.05, seed=0, correlation=0.9):
    rng = np.random.default_rng(seed)
    out = []
    for i, j in pairs:
        shift = truth[j] - truth[i] + rng.normal(0, noise, 2)
        out.append(Link(i, j, tuple(stage[j] - stage[i]), tuple(shift), correlation, True, "accepted",
                        (1000, 2464)))
    return out


def test_linked_tiles_are_exact_and_unlinked_tiles_stay_at_the_stage_model():
    rows, cols = 6, 6
    stage = grid(rows, cols)
    rng = np.random.default_rng(1)
    truth = stage + rng.uniform(-25, 25, stage.shape)
    blank = (8, 27)
    links = links_from_truth(neighbour_pairs(rows, cols, skip=blank), stage, truth)
    # Rejected links must be ignored, whatever their shift says.
    links.append(Link(7, 8, tuple(stage[8] - stage[7]), (5000.0, 0.0), 0.05, False, "low", (1000, 2464)))
    sol = solve(stage, links)
    assert isinstance(sol, Solution) and sol.positions.shape == stage.shape
    linked = np.array([k for k in range(len(stage)) if k not in blank])
    err = placement_errors(sol.positions, truth, linked)
    assert np.median(err[linked]) < 0.1 and err[linked].max() < 0.3
    stage_err = placement_errors(stage, truth, linked)
    for k in blank:
        assert err[k] <= stage_err[k] + 0.5
    assert sorted(len(g) for g in sol.groups) == [1, 1, 34]
    assert (7, 8) not in sol.residuals and len(sol.residuals) == len(links) - 1
    assert max(sol.residuals.values()) < 0.5
    # Random stage errors are not mistaken for a calibration error.
    assert np.allclose(sol.stage_model[:, :2], np.eye(2))
    # Positions stay in the stage frame (the caller shifts them to the canvas).
    assert np.abs(sol.positions.mean(axis=0) - stage.mean(axis=0)).max() < 25


def test_a_wrong_link_is_dropped_by_the_global_solve():
    rows, cols = 5, 5
    stage = grid(rows, cols)
    truth = stage + np.random.default_rng(2).uniform(-25, 25, stage.shape)
    links = links_from_truth(neighbour_pairs(rows, cols), stage, truth)
    wrong = next(k for k, lk in enumerate(links) if (lk.i, lk.j) == (6, 7))
    links[wrong].shift = (links[wrong].shift[0] + 40.0, links[wrong].shift[1] - 15.0)
    sol = solve(stage, links)
    assert sol.rejected_in_solve == [(6, 7)]
    assert sol.residuals[(6, 7)] > 30
    err = placement_errors(sol.positions, truth)
    assert err.max() < 0.3


def test_disconnected_groups_keep_their_stage_separation():
    rows, cols = 4, 6
    stage = grid(rows, cols)
    truth = stage + np.random.default_rng(3).uniform(-25, 25, stage.shape)
    left = [r * cols + c for r in range(rows) for c in range(3)]
    right = [r * cols + c for r in range(rows) for c in range(3, 6)]
    pairs = [p for p in neighbour_pairs(rows, cols) if (p[0] in left) == (p[1] in left)]
    sol = solve(stage, links_from_truth(pairs, stage, truth))
    assert sorted(map(sorted, sol.groups)) == sorted([left, right])
    for group in (left, right):
        dev = sol.positions[group] - truth[group]
        assert np.abs(dev - dev.mean(axis=0)).max() < 0.3
    gap = sol.positions[right].mean(axis=0) - sol.positions[left].mean(axis=0)
    true_gap = truth[right].mean(axis=0) - truth[left].mean(axis=0)
    stage_gap = stage[right].mean(axis=0) - stage[left].mean(axis=0)
    assert np.linalg.norm(gap - true_gap) <= np.linalg.norm(stage_gap - true_gap) + 0.5
    assert gap[0] > 3 * STEP[0] - 100                      # no collapse of one group onto the other


def test_affine_stage_model_corrects_a_miscalibrated_stage():
    rows, cols = 6, 6
    stage = grid(rows, cols)
    angle = np.deg2rad(0.8)
    rot = 1.03 * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    truth = stage @ rot.T + np.random.default_rng(4).uniform(-5, 5, stage.shape)
    blank = (14, 21)
    sol = solve(stage, links_from_truth(neighbour_pairs(rows, cols, skip=blank), stage, truth))
    assert np.allclose(sol.stage_model[:, :2], rot, atol=2e-3)
    linked = np.array([k for k in range(len(stage)) if k not in blank])
    err = placement_errors(sol.positions, truth, linked)
    stage_err = placement_errors(stage, truth, linked)
    assert err[linked].max() < 0.3
    for k in blank:          # the stage is ~100 px off there; the corrected model only a few px
        assert stage_err[k] > 40 and err[k] < 12
    assert np.allclose(apply_model(sol.stage_model, stage[:1]),
                       sol.stage_model[:, :2] @ stage[0] + sol.stage_model[:, 2])


def test_single_row_and_no_links():
    stage = grid(1, 5)
    truth = stage * [1.02, 1.0] + np.random.default_rng(5).uniform(-3, 3, stage.shape)
    pairs = [(k, k + 1) for k in range(4)]
    sol = solve(stage, links_from_truth(pairs, stage, truth))
    assert np.isfinite(sol.positions).all()
    err = placement_errors(sol.positions, truth, np.arange(5))
    assert err.max() < 0.3
    assert sol.stage_model[1, 1] == pytest.approx(1.0)        # nothing to learn across the row
    empty = solve(stage, [])
    assert np.allclose(empty.positions, stage) and len(empty.groups) == 5
    assert empty.residuals == {} and empty.rejected_in_solve == []


def test_options_and_validation():
    stage = grid(2, 2)
    links = links_from_truth([(0, 1), (0, 2), (1, 3), (2, 3)], stage, stage)
    assert np.allclose(solve(stage, links, model="none").positions, stage, atol=0.3)
    with pytest.raises(ValueError):
        solve(stage, links, model="projective")
    with pytest.raises(ValueError):
        solve(stage, links_from_truth([(0, 9)], grid(1, 10), grid(1, 10)))


def test_large_scan_solves_quickly():
    rows = cols = 50
    stage = grid(rows, cols)
    truth = stage + np.random.default_rng(6).uniform(-25, 25, stage.shape)
    links = links_from_truth(neighbour_pairs(rows, cols), stage, truth, noise=0.1)
    for k in (100, 2000, 5000):                           # a few bad links to remove
        links[k].shift = (links[k].shift[0] + 30.0, links[k].shift[1])
    start = time.perf_counter()
    sol = solve(stage, links)
    elapsed = time.perf_counter() - start
    assert len(sol.rejected_in_solve) == 3
    assert placement_errors(sol.positions, truth).max() < 0.5
    assert elapsed < 5.0
