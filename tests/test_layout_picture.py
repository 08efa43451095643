"""The layout picture: tiles, links coloured by their fate, corrected tiles marked, a legend."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from test_report import TILE, fiji_scan, scan

from ofm_tiling.layout_picture import draw_layout
from ofm_tiling.placement import Placement

LEGEND_H = 122


def _rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB")).astype(int)


def _cyan(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r < 40) & (g > 150) & (b > 180)


def test_layout_png_shows_tiles_links_and_legend(tmp_path):
    stage, _, placement = scan()
    path = tmp_path / "layout.png"
    draw_layout(path, placement, stage_positions=stage, tile_shape=TILE,
                names=[f"t{k}" for k in range(len(stage))], width=900)
    rgb = _rgb(path)
    assert rgb.shape[1] == 900 and 300 < rgb.shape[0] <= 1800
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    assert ((g > 120) & (r < 60) & (b < 60)).sum() > 500          # green accepted links
    assert ((r > 180) & (g < 80) & (b < 80)).sum() > 100          # red rejected links
    assert ((r > 150) & (g < 60) & (b > 150)).sum() > 20          # magenta link dropped by the solve
    assert (rgb.sum(axis=2) < 100).sum() > 500                    # dark text and outlines
    assert not _cyan(rgb[:-LEGEND_H]).any()                       # nothing corrected: no cyan tile
    assert _cyan(rgb[-LEGEND_H:]).sum() > 20                      # ... but the legend explains it
    assert [p.name for p in tmp_path.iterdir()] == ["layout.png"]  # no temporary left


def test_fiji_placement_is_drawn_with_its_links_and_corrected_tiles(tmp_path):
    stage, names, placement = fiji_scan()
    path = tmp_path / "layout.png"
    draw_layout(path, placement, names=names, stage_positions=stage, tile_shape=(480, 640), width=1000)
    rgb = _rgb(path)
    picture = rgb[:-LEGEND_H]
    r, g, b = picture[..., 0], picture[..., 1], picture[..., 2]
    assert ((g > 120) & (r < 60) & (b < 60)).sum() > 500          # Fiji's kept links, R ~0.99: green
    assert ((r > 180) & (g < 80) & (b < 80)).sum() > 100          # its rejected ones: red dashes
    cyan = _cyan(picture)
    assert cyan.sum() > 500                                       # three corrected tiles outlined
    # the outlines are on the corrected tiles' edges (a wide scan: the width sets the scale)
    ys, xs = np.nonzero(cyan)
    pos = placement.positions
    scale = (1000 - 32) / (np.ptp(np.vstack([pos, stage])[:, 0]) + 640)
    lo = np.vstack([pos, stage]).min(axis=0)
    boxes = [((pos[k] - lo) * scale + 16, (pos[k] - lo + (640, 480)) * scale + 16) for k in (2, 5, 6)]
    inside = np.zeros(len(xs), bool)
    for (x0, y0), (x1, y1) in boxes:
        inside |= (xs >= x0 - 4) & (xs <= x1 + 4) & (ys >= y0 - 4) & (ys <= y1 + 4)
    assert inside.mean() > 0.99


def test_layout_of_a_single_tile(tmp_path):
    path = tmp_path / "one.png"
    draw_layout(path, Placement.from_stage(np.zeros((1, 2))), stage_positions=[[0.0, 0.0]], tile_shape=TILE,
                width=400)
    with Image.open(path) as im:
        assert im.size[0] == 400


def test_mismatched_inputs_are_refused(tmp_path):
    stage, _, placement = scan()
    with pytest.raises(ValueError, match="11 stage positions"):
        draw_layout(tmp_path / "x.png", placement, stage_positions=stage[:11], tile_shape=TILE)
    assert not list(tmp_path.iterdir())
