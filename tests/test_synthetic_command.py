"""``ofm-tiling example``: every kind from the command line; bad values are one-line errors naming the flag."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tifffile

from ofm_tiling.cli import main as cli_main
from ofm_tiling.synthetic import load_truth

FAST = ["--grid", "2x2", "--tile", "64x48", "--source", "procedural", "--no-truth-png", "-q"]


def test_tile_is_width_by_height(tmp_path):
    assert cli_main(["example", str(tmp_path / "s"), "--planes", "1", *FAST]) == 0
    truth = load_truth(tmp_path / "s")
    assert truth.tile_shape == (48, 64) and truth.grid == (2, 2) and truth.kind == "smart-stack"


def test_tileconfig_grey16_tiff(tmp_path):
    out = tmp_path / "t"
    assert cli_main(["example", str(out), "--kind", "tileconfig", "--pixel-type", "grey16", "--format", "tiff",
                     *FAST]) == 0
    truth = load_truth(out)
    assert (truth.kind, truth.pixel_type, truth.tile_format, truth.planes) == ("tileconfig", "grey16", "tiff", 1)
    tile = tifffile.imread(out / truth.positions[0].files[0])
    assert tile.dtype == np.uint16 and tile.shape == (48, 64)
    assert (out / "TileConfiguration.txt").is_file()


def test_flat_stack(tmp_path):
    assert cli_main(["example", str(tmp_path / "f"), "--kind", "flat", "--planes", "3", *FAST]) == 0
    truth = load_truth(tmp_path / "f")
    assert truth.kind == "flat" and len(list((tmp_path / "f").glob("*.jpeg"))) == 4 * 3


@pytest.mark.parametrize(("options", "flag"), [
    (["--tile", "10x10"], "--tile"), (["--pixel-type", "grey16"], "--format"), (["--overlap", "1.5"], "--overlap"),
    (["--kind", "tileconfig", "--planes", "3"], "--planes"), (["--blank", "9"], "--blank"),
    (["--quality", "0"], "--quality"), (["--workers", "0"], "--workers"), (["--pixel-size", "0"], "--pixel-size"),
    (["--mistag", "0=wrong", "--kind", "flat"], "--mistag"), (["--tile", "10"], "--tile"),
    (["--grid", "2by2"], "--grid"), (["--blank", "a,b"], "--blank"), (["--mistag", "1=odd"], "--mistag")])
def test_bad_values_are_one_line_errors(tmp_path, capsys, options, flag):
    assert cli_main(["example", str(tmp_path / "x"), "--grid", "2x2", "--source", "procedural", "-q", *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ofm-tiling: error: ") and flag in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # checked before any work


def test_old_module_command_is_gone():
    run = subprocess.run([sys.executable, "-m", "ofm_tiling.synthetic", "--help"], capture_output=True, text=True)
    assert run.returncode != 0
