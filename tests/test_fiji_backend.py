"""The Fiji backend (ofm_tiling.fiji.backend) end to end: `stitch --backend fiji` through a fake Fiji.app
whose launcher runs ImageJ 1 with the clearly labelled STAND-IN for "Grid/Collection stitching"
(tests/fiji_standin/), which makes up Fiji's log and layout or REPLAYS a recorded real Fiji run;
and, when OFM_TILING_FIJI=/path/to/Fiji.app is set, against a real Fiji.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import placement_errors
from fiji_standin.harness import fake_fiji, real_fiji, real_truth

from ofm_tiling.cli import main
from ofm_tiling.errors import OfmTilingError
from ofm_tiling.fiji import FijiBackend
from ofm_tiling.fiji.macro import macro_path
from ofm_tiling.files import MARKER
from ofm_tiling.tileconfig import read_tile_configuration

pytest_plugins = ("fiji_standin.fixtures",)  # fixtures: standin_classes, ofm_tiling_on_path

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake launcher is a shell script")


def _checked_errors(scan: Path, truth):
    """Errors (px) of the written registered layout against the truth, and of the stage positions."""
    names, placed = read_tile_configuration(scan / "use" / "TileConfiguration.registered.txt")
    _, stage = read_tile_configuration(scan / "use" / "TileConfiguration.txt")
    true_xy = truth.true_xy_array()
    textured = np.array([not p.blank for p in truth.positions])
    return (placement_errors(placed, true_xy, reference=textured), placement_errors(stage, true_xy, reference=textured),
            textured)


@linux_only
def test_stitch_with_fiji_backend_checks_and_fuses_the_builtin_way(standin_classes, scans, tmp_path, monkeypatch):
    fake = fake_fiji(tmp_path / "Fiji.app", standin_classes)
    source, _ = scans("fiji-backend", grid=(3, 2))
    scan = tmp_path / "scan"
    shutil.copytree(source, scan)
    monkeypatch.setenv("OFM_STANDIN_DROP", "04.jpeg")  # Fiji "could not place" one tile
    assert main(["stitch", str(scan), "--backend", "fiji", "--fiji", str(fake), "--compression", "deflate", "-q"]) == 0
    out = scan / "stitched"
    for name in ("mosaic.ome.tif", "preview.jpg", "stitching-report.json", "layout.png"):
        assert (out / name).is_file(), name
    # The stand-in "registers" every tile at its stage position + (0.5, -0.25) and 04 at (0, 0):
    # the checks put 04 back where the stage model says, and keep the others as Fiji gave them.
    names, registered = read_tile_configuration(scan / "use" / "TileConfiguration.registered.txt")
    _, stage = read_tile_configuration(scan / "use" / "TileConfiguration.txt")
    np.testing.assert_allclose(registered - registered.min(0), stage - stage.min(0), atol=1e-3)
    import tifffile

    from ofm_tiling.fuse import mosaic_shape

    mosaic = tifffile.imread(out / "mosaic.ome.tif")
    assert mosaic.shape == (*mosaic_shape(registered, (240, 320)), 3)  # built-in fusion, not Fiji's image
    report = json.loads((out / "stitching-report.json").read_text())
    assert report["extra"]["backend"] == "fiji" and len(report["tiles"]) == 6
    assert any("04.jpeg" in note and "corrected 1 tile(s)" in note for note in report["extra"]["notes"])
    assert not [p for p in (scan / "use").iterdir() if p.name.startswith(".fiji-fused")]


@linux_only
def test_stitch_with_fiji_backend_corrects_the_recorded_glass_run(standin_classes, scans, tmp_path, monkeypatch):
    recorded = real_fiji("blank-glass")
    fake = fake_fiji(tmp_path / "Fiji.app", standin_classes)
    source, _ = scans("fiji-glass-replay", tile_shape=(480, 640), blank_tiles=(2, 5, 6))
    scan = tmp_path / "scan"
    shutil.copytree(source, scan)
    monkeypatch.setenv("OFM_STANDIN_REPLAY", str(recorded))
    assert main(["stitch", str(scan), "--backend", "fiji", "--fiji", str(fake), "--no-focus-check", "-q"]) == 0
    # The replay is only meaningful for a scan with the recorded names and stage positions; its truth
    # is the recorded scan's (the regenerated tiles only feed the fusion).
    layout = "use/TileConfiguration.txt"
    assert (scan / layout).read_text() == (recorded / layout).read_text()
    true_xy, glass = real_truth(recorded)
    _, placed = read_tile_configuration(scan / "use" / "TileConfiguration.registered.txt")
    _, stage = read_tile_configuration(scan / layout)
    error = placement_errors(placed, true_xy, reference=~glass)
    stage_error = placement_errors(stage, true_xy, reference=~glass)
    assert error.max() <= stage_error.max() + 1.0 and np.median(error[~glass]) <= 0.5, error.round(1)
    assert (error[glass] < 30).all()  # Fiji had 02 and 06 at its origin and 05 about 850 px off
    report = json.loads((scan / "stitched" / "stitching-report.json").read_text())
    note = next(n for n in report["extra"]["notes"] if "corrected 3 tile(s)" in n)
    assert all(name in note for name in ("02.jpeg", "05.jpeg", "06.jpeg"))
    assert not any("log was not available" in n for n in report["extra"]["notes"])  # links read from Fiji's log


@linux_only
@pytest.mark.parametrize("drop, kept", [("", True), ("03.jpeg", False)], ids=["no-correction", "corrected"])
def test_keep_fiji_mosaic_only_when_nothing_was_corrected(standin_classes, scans, tmp_path, monkeypatch, drop, kept):
    from ofm_tiling.collect import collect

    fake = fake_fiji(tmp_path / "Fiji.app", standin_classes)
    source, _ = scans("fiji-keep", grid=(2, 2))
    scan = tmp_path / "scan"
    shutil.copytree(source, scan)
    monkeypatch.setenv("OFM_STANDIN_DROP", drop)
    backend = FijiBackend(fiji=fake, keep_fiji_mosaic=True, method="launcher")
    backend.check()
    collection = collect(scan)
    placement = backend.place(collection, workers=1, show_progress=False)
    assert placement.backend == "fiji" and bool(placement.corrections) is not kept
    if kept:
        mosaic = backend.own_mosaic(collection, placement)
        assert mosaic is not None and mosaic.shape == (30, 40)  # the stand-in's fused image, channels merged
        image = np.concatenate([band for _, band in mosaic.bands])
        assert image.shape == (30, 40, 3) and image[0, 0].tolist() == [40, 80, 120]
    else:
        with pytest.raises(OfmTilingError, match="own mosaic was not kept: 1 tile.*03.jpeg") as err:
            backend.own_mosaic(collection, placement)
        assert "\n" not in str(err.value) and "keep_fiji_mosaic" in str(err.value)
    backend.close()
    assert not [p for p in (scan / "use").iterdir() if p.name.startswith(".fiji-fused")]


def test_default_fusion_is_the_builtin_one(tmp_path):
    assert FijiBackend().own_mosaic(None, None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("options, says", [
    (dict(layout="tiles"), "layout must be"), (dict(method="ssh"), "method must be"),
    (dict(regression_threshold=1.5), "regression_threshold must be"),
    (dict(fiji="/nowhere/Fiji.app"), "no such folder"),
])
def test_check_refuses_bad_options_before_any_work(options, says):
    with pytest.raises(OfmTilingError, match=says) as err:
        FijiBackend(**options).check()
    assert "--" not in str(err.value)  # library errors name parameters, not command-line flags


# ------------------------------------------------------------------------------------------
# A real Fiji, when one is given

real_fiji_app = pytest.mark.skipif(not os.environ.get("OFM_TILING_FIJI"),
                                   reason="set OFM_TILING_FIJI=/path/to/Fiji.app to run against a real Fiji")


def _real_stitch(scan: Path) -> None:
    assert main(["stitch", str(scan), "--backend", "fiji", "--fiji", os.environ["OFM_TILING_FIJI"],
                 "--no-focus-check", "-q"]) == 0


@pytest.mark.fiji
@real_fiji_app
def test_real_fiji_glass_tiles_are_placed_by_the_stage_model(copy_scan):
    scan, truth = copy_scan("real-fiji-glass", tile_shape=(480, 640), blank_tiles=(2, 5, 6))
    _real_stitch(scan)
    error, stage_error, textured = _checked_errors(scan, truth)
    assert error.max() <= stage_error.max() + 1.0 and np.median(error[textured]) <= 0.5, error.round(1)


@pytest.mark.fiji
@real_fiji_app
def test_real_fiji_islands_are_placed_by_the_stage_model(copy_scan):
    # A blank column cuts the scan in two groups of linked tiles.
    scan, truth = copy_scan("real-fiji-islands", grid=(5, 3), tile_shape=(480, 640), blank_tiles=(1, 6, 11))
    _real_stitch(scan)
    error, stage_error, textured = _checked_errors(scan, truth)
    assert error.max() <= stage_error.max() + 1.0 and np.median(error[textured]) <= 0.5, error.round(1)


@pytest.mark.fiji
@real_fiji_app
def test_real_fiji_macro_twice_then_stitch(copy_scan, ofm_tiling_on_path):
    from ofm_tiling.fiji.locate import fiji_launcher, find_fiji

    scan, _ = copy_scan("real-fiji-macro", grid=(3, 2), tile_shape=(480, 640))
    launcher = fiji_launcher(find_fiji(os.environ["OFM_TILING_FIJI"]))
    for _ in range(2):
        run = subprocess.run([str(launcher), "--headless", "--console", "-macro", str(macro_path()), f"scan=[{scan}]"],
                             capture_output=True, text=True, timeout=900)
        assert "ofm-tiling: done" in run.stdout and "ERROR" not in run.stdout, run.stdout[-2000:]
    assert (scan / "stitched-fiji" / MARKER).is_file()
    _real_stitch(scan)


@pytest.mark.fiji
@real_fiji_app
def test_real_fiji_8_megapixel_tiles(copy_scan):
    scan, truth = copy_scan("real-fiji-8mp", grid=(2, 2), tile_shape=(2464, 3280), source="procedural")
    _real_stitch(scan)
    error, _, _ = _checked_errors(scan, truth)
    assert np.median(error) <= 0.5 and error.max() <= 2.0, error.round(2)


@pytest.mark.fiji
@real_fiji_app
def test_real_fiji_stitches_a_small_scan(copy_scan):
    scan, truth = copy_scan("real-fiji-small", grid=(3, 2), tile_shape=(400, 520))
    _real_stitch(scan)
    error, _, _ = _checked_errors(scan, truth)
    assert error.max() < 2.0, error.round(2)
