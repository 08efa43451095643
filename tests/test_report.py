"""The JSON report and the layout picture: complete, loadable, and showing the decisions."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from ofm_tiling.register import Link, Registration
from ofm_tiling.report import draw_layout, link_table, write_report
from ofm_tiling.solve import solve

TILE = (240, 320)


def scan():
    """A 3 x 4 scan: tile 5 blank (its links rejected), one wrong link the solve drops."""
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
    reg = Registration(links, 0.15, np.array([0.02, 0.05, 0.08, np.nan]), 40.0, 2, 50.0,
                       np.zeros((2, 2)), np.array([1.0, 2.0, 3.0]), 3.0)
    return stage, truth, reg, solve(stage, links)


def test_link_table_rows_are_json_ready():
    stage, _, reg, sol = scan()
    rows = link_table(reg.links, sol)
    assert len(rows) == len(reg.links)
    json.dumps(rows, allow_nan=False)
    by_pair = {(r["i"], r["j"]): r for r in rows}
    assert by_pair[(6, 7)]["status"] == "rejected in global solve" and not by_pair[(6, 7)]["accepted"]
    assert by_pair[(6, 7)]["residual"] > 20
    assert by_pair[(4, 5)]["status"] == "rejected in registration"
    assert by_pair[(4, 5)]["residual"] is None and "correlation" in by_pair[(4, 5)]["reason"]
    assert by_pair[(0, 1)]["accepted"] and by_pair[(0, 1)]["residual"] < 0.01
    assert by_pair[(0, 1)]["predicted_shift"] == [224.0, 0.0]


def test_report_has_every_tile_and_link(tmp_path):
    stage, truth, reg, sol = scan()
    names = [f"tile_{k:02d}.jpeg" for k in range(len(stage))]
    path = tmp_path / "stitching-report.json"
    write_report(path, names=names, stage_positions=stage, solution=sol, registration=reg,
                 extra={"options": {"min_overlap": 0.05}})
    doc = json.loads(path.read_text())
    assert [t["name"] for t in doc["tiles"]] == names
    assert len(doc["links"]) == len(reg.links)
    assert {(lk["i"], lk["j"]) for lk in doc["links"]} == {(lk.i, lk.j) for lk in reg.links}
    tile = doc["tiles"][3]
    assert np.allclose(tile["position"], sol.positions[3])
    assert np.allclose(tile["displacement"], sol.positions[3] - stage[3])
    assert doc["tiles"][5]["accepted_links"] == 0
    s = doc["summary"]
    assert s["tiles"] == 12 and s["links"] == len(reg.links)
    assert s["links_rejected_in_registration"] == 4 and s["links_rejected_in_solve"] == 1
    assert s["links_accepted"] == len(reg.links) - 5
    assert s["tiles_without_accepted_link"] == [5]
    assert doc["thresholds"]["max_deviation_px"] == 40.0
    assert doc["thresholds"]["null_correlations"]["count"] == 3       # NaN left out
    assert doc["extra"] == {"options": {"min_overlap": 0.05}}
    assert [p.name for p in tmp_path.iterdir()] == ["stitching-report.json"]   # no temporary left


def test_layout_png_shows_tiles_links_and_legend(tmp_path):
    stage, _, reg, sol = scan()
    path = tmp_path / "layout.png"
    draw_layout(path, stage_positions=stage, positions=sol.positions, tile_shape=TILE, links=reg.links,
                names=[f"t{k}" for k in range(len(stage))], width=900,
                rejected_in_solve=sol.rejected_in_solve)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width == 900 and 300 < im.height <= 1800
        rgb = np.asarray(im.convert("RGB")).astype(int)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    assert ((g > 120) & (r < 60) & (b < 60)).sum() > 500          # green accepted links
    assert ((r > 180) & (g < 80) & (b < 80)).sum() > 100          # red rejected links
    assert ((r > 150) & (g < 60) & (b > 150)).sum() > 20          # magenta link dropped by the solve
    assert (rgb.sum(axis=2) < 100).sum() > 500                    # dark text and outlines


def test_layout_of_a_single_tile(tmp_path):
    path = tmp_path / "one.png"
    draw_layout(path, stage_positions=[[0.0, 0.0]], positions=[[0.0, 0.0]], tile_shape=TILE, links=[],
                width=400)
    with Image.open(path) as im:
        assert im.size[0] == 400
