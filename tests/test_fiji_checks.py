"""The checks of Fiji's registration (ofm_tiling.fiji.checks), on the REAL recorded Fiji runs
(../shared/reference/real-fiji/, with their truth) and on made-up Fiji results with glass, islands
and a false match, each against its ground truth.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import placement_errors
from fiji_standin.harness import real_fiji, real_truth

from ofm_tiling.fiji.checks import check_fiji
from ofm_tiling.fiji.results import FijiPair, read_log_pairs, read_registered
from ofm_tiling.tileconfig import read_tile_configuration

TILE = (480, 640)


def _recorded(case: str):
    folder = real_fiji(case)
    names, stage = read_tile_configuration(folder / "use" / "TileConfiguration.txt")
    registered = read_registered(folder / "fiji-TileConfiguration.registered.txt")
    pairs = read_log_pairs((folder / "fiji-console.log").read_text())
    truth, glass = real_truth(folder)
    return names, stage, registered, pairs, truth, glass


@pytest.mark.parametrize("with_log", [True, False], ids=["fiji-log", "positions-only"])
def test_glass_tiles_fiji_misplaced_are_corrected(with_log):
    names, stage, registered, pairs, truth, glass = _recorded("blank-glass")
    placement = check_fiji(names, stage, TILE, registered, pairs if with_log else None)
    textured = ~glass
    error = placement_errors(placement.positions, truth, reference=textured)
    stage_error = placement_errors(stage, truth, reference=textured)
    # Every tile within the scan's stage error of the truth; textured tiles as Fiji registered them.
    assert error.max() <= stage_error.max() + 1.0, error.round(1)
    assert np.median(error[textured]) <= 0.5 and error[textured].max() <= 1.0
    # Fiji put 02 and 06 at its origin and 05 about 850 px off: none of that is left.
    fiji_error = placement_errors([registered[n] for n in names], truth, reference=textured)
    assert (fiji_error[glass] > 300).all() and (error[glass] < 30).all()
    assert sorted(placement.corrections) == [2, 5, 6]
    assert "stage model" in placement.corrections[6]
    note = next(n for n in placement.notes if n.startswith("corrected 3 tile(s)"))
    assert all(name in note for name in ("02.jpeg", "05.jpeg", "06.jpeg"))
    assert placement.backend == "fiji"


def test_glass_links_from_fijis_log_are_reported_as_fiji_judged_them():
    names, stage, registered, pairs, _, _ = _recorded("blank-glass")
    placement = check_fiji(names, stage, TILE, registered, pairs, threshold=0.30)
    assert len(placement.links) == 29
    by_pair = {(lk.i, lk.j): lk for lk in placement.links}
    glass = by_pair[(2, 5)]  # kept by Fiji (R 0.62 > 0.30), but joins only glass: a group of its own
    assert glass.correlation == pytest.approx(0.6185, abs=1e-4) and glass.threshold == 0.30
    assert glass.shift == pytest.approx((-447.154, 326.9699))
    assert not by_pair[(1, 5)].accepted and "0.235" in by_pair[(1, 5)].reason
    assert [2, 5] in placement.groups and [6] in placement.groups
    assert len(placement.groups[0]) == 9
    assert all(r < 0.5 for r in placement.residuals.values())


def test_fijis_positions_are_kept_exactly_when_they_agree():
    names, stage, registered, pairs, truth, _ = _recorded("normal")
    placement = check_fiji(names, stage, TILE, registered, pairs)
    fiji = np.array([registered[n] for n in names])
    offset = placement.positions[0] - fiji[0]
    np.testing.assert_allclose(placement.positions - offset, fiji, rtol=0, atol=1e-9)  # one shift apart
    assert placement.corrections == {} and not any("corrected" in n for n in placement.notes)
    assert placement_errors(placement.positions, truth).max() < 0.2
    assert len(placement.groups) == 1 and sum(lk.accepted for lk in placement.links) == 29


def _made_up_fiji(truth: np.ndarray, groups: list[list[int]], pairs: list[tuple[int, int]],
                  glass: set[int], names: list[str]):
    """What Fiji writes: each group relative to its first tile at (0, 0); lonely tiles at (0, 0)."""
    registered = {n: (0.0, 0.0) for n in names}
    for group in groups:
        for k in group:
            registered[names[k]] = tuple(truth[k] - truth[group[0]])
    log = [FijiPair(names[i], names[j], tuple(truth[j] - truth[i]), 0.0 if {i, j} & glass else 0.95)
           for i, j in pairs]
    return registered, log


def _grid_scan(cols: int, rows: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    step = np.array([448.0, 336.0])
    cells = [(c, r) for r in range(rows) for c in range(cols)]
    truth = np.array(cells, float) * step + rng.normal(0, 4, (len(cells), 2))
    stage = np.array(cells, float) * step * 1.01 + rng.normal(0, 12, (len(cells), 2))
    pairs = [(i, j) for i in range(len(cells)) for j in range(i + 1, len(cells))
             if max(abs(cells[i][0] - cells[j][0]), abs(cells[i][1] - cells[j][1])) == 1]
    return [f"{k:02d}.jpeg" for k in range(len(cells))], cells, truth, stage, pairs


def test_islands_and_a_glass_column_land_where_the_stage_model_puts_them():
    names, cells, truth, stage, pairs = _grid_scan(5, 3)
    glass = {k for k, (c, _) in enumerate(cells) if c == 1}          # column 1 is blank glass
    island = [k for k, (c, _) in enumerate(cells) if c == 0]         # column 0: cut off by it
    main = [k for k, (c, _) in enumerate(cells) if c >= 2]
    registered, log = _made_up_fiji(truth, [main, island], pairs, glass, names)
    placement = check_fiji(names, stage, TILE, registered, log)
    textured = np.array([k not in glass for k in range(len(names))])
    error = placement_errors(placement.positions, truth, reference=np.array(main))
    stage_error = placement_errors(stage, truth, reference=np.array(main))
    assert error.max() <= stage_error.max() + 1.0, error.round(1)
    assert np.median(error[textured]) <= 0.5
    assert np.allclose(error[main], 0, atol=1e-6)
    assert sorted(placement.corrections) == sorted(island + sorted(glass))
    assert "group of 3 tiles" in placement.corrections[island[0]]
    # The island keeps Fiji's relative positions (they agree with the checked links).
    rel = placement.positions[island] - placement.positions[island[0]]
    np.testing.assert_allclose(rel, truth[island] - truth[island[0]], atol=1e-6)


def test_a_false_match_fiji_kept_is_dropped_and_its_tile_corrected():
    names, cells, truth, stage, pairs = _grid_scan(5, 4)
    registered, log = _made_up_fiji(truth, [list(range(len(names)))], pairs, set(), names)
    # Tile 19 (bottom right corner) matched its neighbours 250 px off, beyond what the stage allows:
    # Fiji followed the false match.
    bad = 19
    log = [FijiPair(p.a, p.b, tuple(np.add(p.shift, (250.0, 0.0) if p.b == names[bad] else (0.0, 0.0))),
                    p.correlation) for p in log]
    registered[names[bad]] = tuple(np.add(registered[names[bad]], (250.0, 0.0)))
    placement = check_fiji(names, stage, TILE, registered, log)
    error = placement_errors(placement.positions, truth, reference=np.arange(len(names)) != bad)
    stage_error = placement_errors(stage, truth, reference=np.arange(len(names)) != bad)
    assert error[bad] <= stage_error.max() + 1.0 and np.delete(error, bad).max() < 1e-6
    assert list(placement.corrections) == [bad]
    dropped = [lk for lk in placement.links if not lk.accepted]
    assert dropped and all(lk.j == bad for lk in dropped) and all("stage prediction" in lk.reason for lk in dropped)
    assert any("disagree with the stage positions" in n for n in placement.notes)
