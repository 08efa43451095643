"""The JSON report: complete, loadable, and showing the decisions, whichever backend placed the tiles."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
from conftest import real_fiji

from ofm_tiling.placement import Criteria, Link, Placement, apply_model
from ofm_tiling.report import FORMAT, VERSION, link_table, report_frame, write_report
from ofm_tiling.solve import solve

TILE = (240, 320)


def scan() -> tuple[np.ndarray, np.ndarray, Placement]:
    """A 3 x 4 scan placed by the built-in backend: tile 5 blank (its links rejected), one wrong
    link the solve drops."""
    rows, cols = 3, 4
    stage = np.array([(c * 224.0, r * 168.0) for r in range(rows) for c in range(cols)])
    truth = stage + np.random.default_rng(0).uniform(-20, 20, stage.shape)
    links = []
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            for j in ([i + 1] if c + 1 < cols else []) + ([i + cols] if r + 1 < rows else []):
                pred = tuple(stage[j] - stage[i])
                overlap = (int(320 - abs(pred[0])), int(240 - abs(pred[1])))
                if 5 in (i, j):
                    links.append(Link(i, j, pred, (pred[0] + 3.0, pred[1] - 7.0), 0.04, False,
                                      "correlation 0.040 below the 0.150 needed", overlap, threshold=0.15))
                else:
                    shift = tuple(truth[j] - truth[i])
                    corr = 0.2 if (i, j) == (0, 4) else 0.9
                    links.append(Link(i, j, pred, shift, corr, True, "accepted", overlap,
                                      fine_correlation=0.95, threshold=0.15))
    bad = next(lk for lk in links if (lk.i, lk.j) == (6, 7))
    bad.shift = (bad.shift[0] + 35.0, bad.shift[1])
    criteria = Criteria(threshold=0.15, max_deviation=40.0, significance_threshold=3.0, search_radius=50.0,
                        coarse_scale=2, null_correlations=np.array([0.02, 0.05, 0.08, np.nan]),
                        null_significance=np.array([1.0, 2.0, 3.0]))
    sol = solve(stage, links)
    placement = Placement(sol.positions, links, criteria, sol.stage_model, sol.groups, sol.residuals,
                          sol.rejected_in_solve)
    return stage, truth, placement


def fiji_scan() -> tuple[np.ndarray, list[str], Placement]:
    """The real Fiji run on the blank-glass scan (../shared/reference/real-fiji): Fiji's pairwise
    links with its R, among them the glass-to-glass link 02 <- 05 that Fiji kept (R 0.62) making a
    group of its own, and the three glass tiles corrected to the stage model (positions: the truth)."""
    folder = real_fiji("blank-glass")
    with open(folder / "use" / "tiles.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = [r["tile"] for r in rows]
    stage = np.array([(float(r["x_px"]), float(r["y_px"])) for r in rows])
    with open(folder / "truth-positions.csv", newline="") as fh:
        truth = {r["tile"]: (float(r["true_x"]), float(r["true_y"])) for r in csv.DictReader(fh)}
    positions = np.array([truth[n] for n in names])
    pair = re.compile(r"^(\S+)\[1\] <- (\S+)\[1\]: \((\S+), (\S+)\) correlation \(R\)=(\S+) ")
    links = []
    for line in (folder / "fiji-console.log").read_text().splitlines():
        m = pair.match(line)
        if not m:
            continue
        i, j = names.index(m[1]), names.index(m[2])
        shift, r, pred = (float(m[3]), float(m[4])), float(m[5]), tuple(stage[j] - stage[i])
        deviation = float(np.hypot(shift[0] - pred[0], shift[1] - pred[1]))
        kept = r >= 0.30 and deviation <= 40
        reason = ("accepted" if kept else f"R {r:.3f} below Fiji's 0.30" if r < 0.30 else
                  f"shift {deviation:.0f} px from the stage prediction (bound 40 px)")
        links.append(Link(i, j, pred, shift, r, kept, reason, (0, 0), threshold=0.30))
    glass = {2: "group of 2 tiles not linked to the main group: placed by the stage model",
             5: "group of 2 tiles not linked to the main group: placed by the stage model",
             6: "no kept link: placed by the stage model"}
    placement = Placement(positions, links, Criteria(threshold=0.30, max_deviation=40.0),
                          groups=[[k for k in range(12) if k not in glass], [2, 5], [6]],
                          corrections=glass, notes=["3 tiles placed by the stage model"], backend="fiji")
    return stage, names, placement


def test_link_table_rows_are_json_ready():
    _, _, placement = scan()
    rows = link_table(placement)
    assert len(rows) == len(placement.links)
    json.dumps(rows, allow_nan=False)
    by_pair = {(r["i"], r["j"]): r for r in rows}
    assert by_pair[(6, 7)]["status"] == "rejected in global solve" and not by_pair[(6, 7)]["accepted"]
    assert by_pair[(6, 7)]["residual"] > 20
    assert by_pair[(4, 5)]["status"] == "rejected in registration"
    assert by_pair[(4, 5)]["residual"] is None and "correlation" in by_pair[(4, 5)]["reason"]
    assert by_pair[(0, 1)]["accepted"] and by_pair[(0, 1)]["residual"] < 0.01
    assert by_pair[(0, 1)]["predicted_shift"] == [224.0, 0.0]


def test_report_has_every_tile_and_link(tmp_path):
    stage, truth, placement = scan()
    names = [f"tile_{k:02d}.jpeg" for k in range(len(stage))]
    path = tmp_path / "stitching-report.json"
    write_report(path, placement, names=names, stage_positions=stage, extra={"options": {"min_overlap": 0.05}})
    doc = json.loads(path.read_text())
    assert (doc["format"], doc["version"]) == (FORMAT, VERSION) == ("ofm-tiling stitching report", 2)
    assert doc["backend"] == "builtin" and doc["notes"] == []
    assert [t["name"] for t in doc["tiles"]] == names
    assert len(doc["links"]) == len(placement.links)
    assert {(lk["i"], lk["j"]) for lk in doc["links"]} == {(lk.i, lk.j) for lk in placement.links}
    tile = doc["tiles"][3]
    assert np.allclose(tile["position"], placement.positions[3])
    assert np.allclose(tile["displacement"], placement.positions[3] - stage[3])
    assert doc["tiles"][5]["accepted_links"] == 0
    assert all(t["correction"] is None for t in doc["tiles"])
    s = doc["summary"]
    assert s["tiles"] == 12 and s["links"] == len(placement.links)
    assert s["links_rejected_in_registration"] == 4 and s["links_rejected_in_solve"] == 1
    assert s["links_accepted"] == len(placement.links) - 5
    assert s["tiles_without_accepted_link"] == [5] and s["tiles_corrected"] == []
    assert doc["thresholds"]["max_deviation_px"] == 40.0
    assert doc["thresholds"]["null_correlations"]["count"] == 3       # NaN left out
    assert doc["thresholds"]["coarse_scale"] == 2 and doc["thresholds"]["significance"] == 3.0
    assert np.allclose(doc["stage_model"], placement.stage_model)
    assert doc["groups"] == placement.groups
    assert doc["extra"] == {"options": {"min_overlap": 0.05}}
    assert [p.name for p in tmp_path.iterdir()] == ["stitching-report.json"]   # no temporary left


def test_fiji_placement_is_reported_with_its_links_and_corrections(tmp_path):
    stage, names, placement = fiji_scan()
    path = tmp_path / "stitching-report.json"
    write_report(path, placement, names=names, stage_positions=stage)
    doc = json.loads(path.read_text())
    assert doc["backend"] == "fiji" and doc["notes"] == ["3 tiles placed by the stage model"]
    assert len(doc["links"]) == 29                                    # every pair in Fiji's log
    glass = next(r for r in doc["links"] if (r["name_i"], r["name_j"]) == ("02.jpeg", "05.jpeg"))
    assert glass["correlation"] == pytest.approx(0.6185, abs=1e-4) and glass["threshold"] == 0.30
    assert glass["status"] == "accepted" and glass["deviation"] < 40  # agrees with the stage: kept
    assert glass["measured_shift"] == pytest.approx([-447.2, 327.0], abs=0.1)
    weak = next(r for r in doc["links"] if (r["name_i"], r["name_j"]) == ("00.jpeg", "05.jpeg"))
    assert weak["status"] == "rejected in registration" and weak["reason"] == "R 0.005 below Fiji's 0.30"
    best = max(doc["links"], key=lambda r: r["correlation"])
    assert best["accepted"] and best["correlation"] > 0.98 and best["status"] == "accepted"
    assert [t["correction"] is not None for t in doc["tiles"]] == [k in (2, 5, 6) for k in range(12)]
    assert doc["tiles"][6]["correction"] == "no kept link: placed by the stage model"
    assert doc["summary"]["tiles_corrected"] == [2, 5, 6]
    assert doc["summary"]["links_accepted"] == 9  # 8 tissue pairs with R > 0.98, and the glass pair
    assert doc["summary"]["tiles_without_accepted_link"] == [6]
    assert doc["summary"]["groups"] == 3 and doc["groups"][1] == [2, 5]
    assert doc["thresholds"]["correlation_for_median_overlap"] == 0.30
    assert doc["thresholds"]["null_correlations"] is None


def test_report_frame_removes_the_global_shift_and_keeps_the_model_consistent():
    stage, _, placement = scan()
    model = np.array([[1.01, 0.002, 30.0], [-0.003, 0.99, -12.0]])
    placement.stage_model = model
    placement = placement.shifted(np.array([-500.0, 250.0]))
    frame = report_frame(placement, stage)
    assert np.allclose((frame.placement.positions - frame.stage_positions).mean(axis=0), 0)
    # the rewritten model maps the moved stage positions where the original mapped the originals
    assert np.allclose(apply_model(frame.placement.stage_model, frame.stage_positions),
                       apply_model(placement.stage_model, stage))
    assert frame.placement.positions is placement.positions
    with pytest.raises(ValueError, match="3 stage positions but 12"):
        report_frame(placement, stage[:3])


def test_mismatched_names_are_refused(tmp_path):
    stage, _, placement = scan()
    with pytest.raises(ValueError, match="11 names, 12 stage positions and 12 placed tiles"):
        write_report(tmp_path / "r.json", placement, names=["a"] * 11, stage_positions=stage)
    assert not list(tmp_path.iterdir())
