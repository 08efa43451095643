"""What `ofm-tiling fiji-macro` prints (ofm_tiling.fiji.command): exactly the macro the Fiji backend
runs, the option strings and the checks the shipped macro asks for; only the options it uses.
"""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from conftest import placement_errors
from fiji_standin.harness import fake_fiji, real_fiji, real_truth

from ofm_tiling.cli import main
from ofm_tiling.fiji import FijiBackend
from ofm_tiling.fiji.options import CHECKED_FILE, REGISTRATION_ONLY, grid_collection_options
from ofm_tiling.files import MARKER
from ofm_tiling.tileconfig import read_tile_configuration

pytest_plugins = ("fiji_standin.fixtures",)  # fixtures: standin_classes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake launcher is a shell script")
@pytest.mark.parametrize("layout", ["positions", "grid"])
def test_fiji_macro_prints_exactly_the_macro_the_backend_runs(standin_classes, scans, tmp_path, capsys, layout):
    from ofm_tiling.collect import collect

    fake = fake_fiji(tmp_path / "Fiji.app", standin_classes)
    source, _ = scans("fiji-command", grid=(3, 2))
    scan = tmp_path / "scan"
    shutil.copytree(source, scan)
    collection = collect(scan)
    backend = FijiBackend(fiji=fake, layout=layout, method="launcher")
    backend.check()
    backend.place(collection, workers=1, show_progress=False)
    backend.close()
    assert main(["fiji-macro", str(scan), "--fiji-layout", layout]) == 0
    printed = capsys.readouterr().out
    assert printed == (fake / "last-macro.ijm").read_text()  # what the fake launcher was given
    assert main(["fiji-macro", str(scan), "--fiji-layout", layout, "--options"]) == 0
    options = capsys.readouterr().out.strip()
    assert f"run(\"Grid/Collection stitching\", \"{options}\");" in printed
    assert f"fusion_method=[{REGISTRATION_ONLY}]" in options


def test_fiji_macro_option_strings(tmp_path, capsys):
    scan = tmp_path / "a scan"
    assert main(["fiji-macro", str(scan), "--options"]) == 0
    assert capsys.readouterr().out.strip() == grid_collection_options(scan / "use", fusion=REGISTRATION_ONLY)
    assert main(["fiji-macro", str(scan), "--use", str(tmp_path / "tiles"), "--fuse-options"]) == 0
    assert capsys.readouterr().out.strip() == grid_collection_options(
        tmp_path / "tiles", layout_file=CHECKED_FILE, compute_overlap=False)


@pytest.mark.parametrize("argv", [["--select", "tag"], ["--link"], ["--strict"], ["--focus", "edf"], ["--grid", "2x2"],
                                  ["--options", "--fuse-options"], ["--options", "--check", "log.txt"]])
def test_fiji_macro_accepts_only_the_options_it_uses(tmp_path, argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fiji-macro", str(tmp_path), *argv])
    assert exit_.value.code == 2


def test_fiji_macro_check_applies_the_checks_to_a_real_fiji_run(tmp_path, capsys):
    recorded = real_fiji("blank-glass")
    scan = tmp_path / "scan"
    shutil.copytree(recorded / "use", scan / "use")
    shutil.copyfile(recorded / "fiji-TileConfiguration.registered.txt",
                    scan / "use" / "TileConfiguration.registered.txt")
    assert main(["fiji-macro", str(scan), "--check", str(recorded / "fiji-console.log")]) == 0
    printed = capsys.readouterr().out
    assert "ofm-tiling: note: corrected 3 tile(s) Fiji misplaced: 02.jpeg" in printed
    assert printed.rstrip().endswith(f"checked positions in {scan.resolve() / 'use' / CHECKED_FILE}")
    _, checked = read_tile_configuration(scan / "use" / CHECKED_FILE)
    truth, glass = real_truth(recorded)
    error = placement_errors(checked, truth, reference=~glass)
    assert np.median(error[~glass]) <= 0.5 and (error[glass] < 30).all()
    assert (scan / "stitched-fiji" / MARKER).is_file()


def test_fiji_macro_check_errors_go_to_stdout_when_asked(tmp_path, capsys):
    scan = tmp_path / "scan"
    (scan / "use").mkdir(parents=True)
    assert main(["fiji-macro", str(scan), "--check", "-", "--errors-to-stdout"]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("ofm-tiling: error: ") and "TileConfiguration.txt: file not found" in out and err == ""
    assert main(["fiji-macro", str(scan), "--check", "-"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "file not found" in err


def test_fiji_macro_out_needs_check(tmp_path, capsys):
    assert main(["fiji-macro", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--out is for --check only" in capsys.readouterr().err
