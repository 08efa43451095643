"""Running Fiji (ofm_tiling.fiji.run) through a fake Fiji.app whose launcher runs real ImageJ 1 with the
clearly labelled STAND-IN for "Grid/Collection stitching" (tests/fiji_standin/), not Fiji.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from fiji_standin.harness import fake_fiji, use_folder

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.fiji.options import REGISTRATION_ONLY
from ofm_tiling.fiji.run import run_fiji

pytest_plugins = ("fiji_standin.fixtures",)  # fixtures: standin_classes

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake launcher is a shell script")


@linux_only
@pytest.mark.parametrize("layout", ["positions", "grid"])
def test_run_fiji_falls_back_to_the_launcher_and_reads_fijis_log_and_layout(standin_classes, tmp_path, monkeypatch,
                                                                            caplog, layout):
    fake = fake_fiji(tmp_path / "Fiji.app", standin_classes)
    # A snake-by-rows 3 x 2 scan, in a folder whose path holds brackets (reached through a link).
    stage = [(0, 0), (700, 0), (1400, 0), (1400, 500), (700, 500), (0, 500)]
    use = tmp_path / "scan [copy 2]" / "use"
    names = use_folder(use, stage)
    (use / "TileConfiguration.registered.txt").write_text("dim = 2\nstale; ; (1.0, 1.0)\n")
    monkeypatch.setenv("OFM_STANDIN_DROP", "04.jpeg")
    caplog.set_level("WARNING", logger="ofm_tiling")
    result = run_fiji(use, names=names, stage_positions=np.array(stage, float), tile_shape=(600, 800), fiji=fake,
                      layout=layout, heap_gb=0.5)
    try:
        assert result.method == "launcher"
        assert "imglib2-imglyb-*.jar and imglib2-unsafe-*.jar" in caplog.text  # says which jars are missing
        assert "copy them into" in result.fallback and str(fake / "jars") in result.fallback
        args = (fake / "launcher-args.txt").read_text().splitlines()
        assert args[:3] == ["--mem=512m", "--headless", "--console"] and args[3] == "-macro"
        expected = dict(zip(names, (np.array(stage, float) + [0.5, -0.25]).tolist()))  # what the stand-in wrote
        expected["04.jpeg"] = [0.0, 0.0]  # as Fiji writes a tile no kept link reaches
        assert {n: list(p) for n, p in result.registered.items()} == expected
        # Fiji's log, read from the launcher's console: one pair per overlapping neighbours.
        by_pair = {(p.a, p.b): p for p in result.pairs}
        assert by_pair[("00.jpeg", "01.jpeg")].shift == (700.0, 0.0)
        assert by_pair[("00.jpeg", "01.jpeg")].correlation == pytest.approx(0.95)
        assert by_pair[("01.jpeg", "04.jpeg")].correlation == 0.0
        assert f"fusion_method=[{REGISTRATION_ONLY}]" in result.job.options and result.fused_dir is None
        if layout == "grid":
            assert "type=[Grid: snake by rows] order=[Right & Down                ]" in result.job.options
            assert "grid_size_x=3 grid_size_y=2" in result.job.options
            assert "file_names=[{ii}.jpeg]" in result.job.options
            assert result.job.notes == ["Fiji grid layout: 3 x 2 tiles, Grid: snake by rows, "
                                        "Right & Down, 15% overlap"]
        else:
            assert result.job.options.startswith("type=[Positions from file]")
        assert "[copy 2]" not in result.job.options  # the link, not the bracketed path, went to Fiji
    finally:
        result.close()


@linux_only
def test_run_fiji_with_fusion_gives_fijis_channels_as_rgb_and_cleans_up(standin_classes, tmp_path):
    fake = fake_fiji(tmp_path / "Fiji.app", standin_classes)
    use = tmp_path / "scan" / "use"
    names = use_folder(use, [(0, 0), (700, 0)])
    result = run_fiji(use, names=names, stage_positions=np.array([(0, 0), (700, 0)], float), tile_shape=(600, 800),
                      fiji=fake, fuse=True, method="launcher")
    shape, bands = result.fused()
    fused_dir = result.fused_dir
    image = np.concatenate([band for _, band in bands])
    assert shape == (30, 40) and image.shape == (30, 40, 3)
    assert image[0, 0].tolist() == [40, 80, 120] and image[29, 39].tolist() == [(40 * c + 68) & 255 for c in (1, 2, 3)]
    assert fused_dir is not None and not fused_dir.exists()  # temporary channels removed once read
    assert not [p for p in use.iterdir() if p.name.startswith(".fiji-fused")]


@linux_only
def test_run_fiji_reports_a_failed_stitching(standin_classes, tmp_path, monkeypatch):
    fake = fake_fiji(tmp_path / "Fiji.app", standin_classes)
    use = tmp_path / "scan" / "use"
    names = use_folder(use, [(0, 0), (700, 0)])
    (use / "TileConfiguration.txt").unlink()  # the stand-in cannot read the layout: writes nothing
    with pytest.raises(OfmTilingError, match="registered layout"):
        run_fiji(use, names=names, stage_positions=np.array([(0, 0), (700, 0)], float), tile_shape=(600, 800),
                 fiji=fake, fuse=True, method="launcher")
    assert not [p for p in use.iterdir() if p.name.startswith(".fiji-fused")]


def test_run_fiji_refuses_bad_arguments_in_one_line(standin_classes, tmp_path):
    fake = fake_fiji(tmp_path / "Fiji.app", standin_classes)
    use = tmp_path / "use"
    names = use_folder(use, [(0, 0)])
    with pytest.raises(OfmTilingError, match="at least 2 tiles"):
        run_fiji(use, names=names, stage_positions=np.zeros((1, 2)), tile_shape=(600, 800), fiji=fake)
    with pytest.raises(OfmTilingError, match="method must be"):
        run_fiji(use, names=["a", "b"], stage_positions=np.zeros((2, 2)), tile_shape=(600, 800), fiji=fake,
                 method="ssh")
