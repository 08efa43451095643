"""The macros (ofm_tiling.fiji.macro): the one the Fiji backend runs and the shipped collect-and-stitch
macro (macros/), run in real headless ImageJ 1 against the clearly labelled STAND-IN for "Grid/Collection
stitching" (tests/fiji_standin/). `ofm-tiling collect` is a stub on PATH where a test says so; every
other `ofm-tiling` command the macro runs is the real one of this source tree.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from fiji_standin.harness import POSITIONS_LABELS, REPO, command_on_path, fake_fiji, ij_options, ij_value, read_back

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.fiji.macro import install_macro, macro_path, macro_string, plan_job
from ofm_tiling.fiji.options import CHECKED_FILE, REGISTRATION_ONLY, grid_collection_options
from ofm_tiling.files import MARKER
from ofm_tiling.tileconfig import read_tile_configuration

pytest_plugins = ("fiji_standin.fixtures",)  # fixtures: ij, run_macro, standin_classes, ofm_tiling_on_path


@pytest.mark.parametrize("text", ["plain", 'it\'s "quoted" \\ back', "sc\u00e4n \u4e2d \U0001F52C", "", "\u00e9"])
def test_macro_string_survives_the_macro_interpreter(run_macro, ij, text):
    expression = macro_string(text)
    assert expression.isascii()
    _, error, _ = run_macro(f'call("java.lang.System.setProperty", "ofm.test.string", {expression});')
    assert error is None
    assert str(ij.System.getProperty("ofm.test.string")) == text


def test_backend_macro_registers_only_with_the_same_options(run_macro, ij, tmp_path):
    use = tmp_path / "scan \u00e4 1" / "use"
    use.mkdir(parents=True)
    (use / "TileConfiguration.txt").write_text(
        "dim = 2\n00.jpeg; ; (0.0, 0.0)\n01.jpeg; ; (700.0, 0.0)\n", encoding="utf-8")
    job = plan_job(use, names=["00.jpeg", "01.jpeg"], stage_positions=np.array([[0, 0], [700, 0.0]]),
                   tile_shape=(600, 800))
    assert job.macro.isascii()
    printed, error, recorded = run_macro(job.macro)
    assert error is None, printed
    assert recorded == [ij_options(grid_collection_options(use, fusion=REGISTRATION_ONLY))] == [ij_options(job.options)]
    got = read_back(ij, recorded[0], POSITIONS_LABELS)
    assert got["directory"] == use.as_posix() and got["fusion_method"] == REGISTRATION_ONLY
    assert "ofm-tiling: done" in printed and job.registered == use / "TileConfiguration.registered.txt"
    assert "00.jpeg[1] <- 01.jpeg[1]: (700.0, 0.0) correlation (R)=0.95" in printed  # the stand-in's log


def test_backend_macro_with_fusion_writes_the_channels(run_macro, tmp_path):
    use = tmp_path / "use"
    use.mkdir()
    (use / "TileConfiguration.txt").write_text("dim = 2\n00.jpeg; ; (0.0, 0.0)\n01.jpeg; ; (700.0, 0.0)\n")
    job = plan_job(use, names=["00.jpeg", "01.jpeg"], stage_positions=np.array([[0, 0], [700, 0.0]]),
                   tile_shape=(600, 800), fused_dir=tmp_path / "fused")
    printed, error, recorded = run_macro(job.macro)
    assert error is None and "ofm-tiling: done" in printed
    assert "fusion_method=[Linear Blending]" in recorded[0] and (tmp_path / "fused" / "img_t1_z1_c1").is_file()


# ------------------------------------------------------------------------------------------
# The macros/ collect-and-stitch macro

STUB = """\
#!/bin/sh
# STUB of `ofm-tiling collect` for tests/test_fiji_macro.py: records its arguments, writes a small use/
# (4 tiles of 800x600). Every other subcommand runs the real ofm-tiling of this source tree.
if [ "$1" != "collect" ]; then PYTHONPATH="{repo}" exec "{python}" -m ofm_tiling.cli "$@"; fi
printf '%s\\n' "$@" > "$(dirname "$0")/args.txt"
scan="$2"; use="$scan/use"
[ "$4" ] && use="$4"
if [ -e "$scan/stub-fails" ]; then echo "ofm-tiling: error: $scan: no position folders found" >&2; exit 2; fi
mkdir -p "$use"
"{python}" -c "
import sys; from PIL import Image
for k in range(4): Image.new('RGB', (800, 600), (40 * k, 90, 160)).save(sys.argv[1] + '/%02d.jpeg' % k)
lines = ['%02d.jpeg; ; (%d.000, %d.000)' % (k, 700 * (k % 2), 500 * (k // 2)) for k in range(4)]
open(sys.argv[1] + '/TileConfiguration.txt', 'w').write('dim = 2\\n' + '\\n'.join(lines) + '\\n')
" "$use"
echo "Collected 4 tiles (800x600) into $use"
"""


@pytest.fixture
def stub_on_path(tmp_path, monkeypatch) -> Path:
    """The stub `ofm-tiling` first on PATH; returns its folder (where it records its arguments)."""
    return command_on_path(tmp_path / "bin", STUB.format(repo=REPO, python=sys.executable), monkeypatch).parent


def _stub_args(bin_dir: Path) -> list[str]:
    return (bin_dir / "args.txt").read_text().splitlines()


def test_macro_file_collects_registers_checks_fuses_and_saves(run_macro, ij, stub_on_path, tmp_path):
    scan = tmp_path / "My Scans" / "slide 3 (x40)"
    scan.mkdir(parents=True)
    printed, error, recorded = run_macro(macro_path().read_text(), f"scan=[{scan}]", drop="03.jpeg")
    assert error is None, printed
    assert _stub_args(stub_on_path) == ["collect", str(scan), "--use", str(scan / "use"), "--select", "tag"]
    # 1. registration only, with the option string of the Python backend (asked of the command);
    # 2. fusion of the checked positions.
    assert len(recorded) == 2
    python_options = grid_collection_options(scan / "use", fusion=REGISTRATION_ONLY)
    assert read_back(ij, recorded[0], POSITIONS_LABELS) == read_back(ij, python_options, POSITIONS_LABELS)
    fuse = read_back(ij, recorded[1], POSITIONS_LABELS)
    assert fuse["layout_file"] == CHECKED_FILE and fuse["fusion_method"] == "Linear Blending"
    assert fuse["compute_overlap"] is False and ij_value(ij, recorded[1], "Output_directory") is None
    # The dropped tile is named once, by the command's checks; the reference tile at (0, 0) is not.
    assert "corrected 1 tile(s) Fiji misplaced: 03.jpeg" in printed and "00.jpeg:" not in printed
    names, checked = read_tile_configuration(scan / "use" / CHECKED_FILE)
    _, stage = read_tile_configuration(scan / "use" / "TileConfiguration.txt")
    np.testing.assert_allclose(checked, stage - stage.min(axis=0), atol=1e-3)  # 03 back at its stage place
    import tifffile

    mosaic = tifffile.imread(scan / "stitched-fiji" / "mosaic.tif")
    assert mosaic.shape == (3, 30, 40) and mosaic.dtype == np.uint8
    assert (scan / "stitched-fiji" / "mosaic.jpg").stat().st_size > 0
    assert (scan / "stitched-fiji" / MARKER).is_file()  # collection skips it
    assert printed.rstrip().endswith("ofm-tiling: done")


def test_macro_file_says_clearly_when_ofm_tiling_is_not_found(run_macro, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no ofm-tiling anywhere
    scan = tmp_path / "scan"
    scan.mkdir()
    printed, error, recorded = run_macro(macro_path().read_text(), f"scan=[{scan}]")
    assert error is None, printed
    assert "ofm-tiling: ERROR: the command 'ofm-tiling' was not found" in printed
    assert "command=[" in printed and "pip install ofm-tiling" in printed
    assert recorded == []  # never went on to stitch


def test_macro_file_uses_the_command_path_given(run_macro, stub_on_path, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the stub itself needs dirname and mkdir
    scan = tmp_path / "scan"
    scan.mkdir()
    printed, error, recorded = run_macro(
        macro_path().read_text(), f"scan=[{scan}] command=[{stub_on_path / 'ofm-tiling'}] select=sharpest")
    assert error is None, printed
    assert _stub_args(stub_on_path)[4:] == ["--select", "sharpest"]
    assert len(recorded) == 2 and "ofm-tiling: done" in printed


def test_macro_file_shows_the_error_text_of_a_failed_collection(run_macro, stub_on_path, tmp_path):
    scan = tmp_path / "scan"
    (scan / "use").mkdir(parents=True)
    (scan / "use" / "TileConfiguration.txt").write_text("dim = 2\n00.jpeg; ; (0.0, 0.0)\n")  # stale
    (scan / "stub-fails").touch()
    printed, error, recorded = run_macro(macro_path().read_text(), f"scan=[{scan}]")
    assert error is None, printed
    assert "ofm-tiling: ERROR: 'ofm-tiling collect' did not write" in printed
    assert "no position folders found" in printed  # the command's own error text (its stderr)
    assert recorded == []


def test_macro_file_shows_the_error_text_of_a_failed_check(run_macro, stub_on_path, tmp_path):
    scan = tmp_path / "scan"
    out = scan / "results"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("the user's own file")  # not ofm-tiling's folder: refused
    printed, error, recorded = run_macro(macro_path().read_text(), f"scan=[{scan}] out=[{out}]")
    assert error is None, printed
    assert "ofm-tiling: ERROR: 'ofm-tiling fiji-macro --check' failed" in printed
    assert "was not made by ofm-tiling" in printed and len(recorded) == 1  # registered, never fused
    assert (out / "notes.txt").read_text() == "the user's own file"


def test_macro_file_needs_a_scan_folder_when_given_arguments(run_macro):
    printed, error, recorded = run_macro(macro_path().read_text(), "collect=no")
    assert error is None
    assert "ofm-tiling: ERROR: no scan folder given" in printed and recorded == []


def test_macro_file_passes_the_collect_options(run_macro, ij, stub_on_path, tmp_path):
    scan = tmp_path / "scan one"
    scan.mkdir()
    out = tmp_path / "result folder"
    printed, error, recorded = run_macro(macro_path().read_text(),
                                         f"scan=[{scan}] out=[{out}] select=sharpest grid=2x2 overlap=0.3")
    assert error is None, printed
    assert _stub_args(stub_on_path) == ["collect", str(scan), "--use", str(scan / "use"), "--select", "sharpest",
                                        "--grid", "2x2", "--overlap", "0.3"]
    assert read_back(ij, recorded[0], POSITIONS_LABELS)["directory"] == (scan / "use").as_posix()
    assert (out / "mosaic.tif").is_file() and (out / MARKER).is_file()


def test_macro_file_holds_no_fiji_rule_of_its_own():
    text = macro_path().read_text(encoding="utf-8")
    assert text.isascii()
    assert text.count("args = getArgument();") == 1
    assert 'run("Grid/Collection stitching", options);' in text
    # The option strings and the placement checks come from the ofm-tiling command.
    for rule in ("Positions from file", "regression_threshold", "compute_overlap", "Linear Blending",
                 "could not place", "(0.0, 0.0)", MARKER):
        assert rule not in text, rule
    assert '"--options"' in text and '"--check"' in text and '"--fuse-options"' in text


def test_macro_path_is_found_from_a_source_checkout():
    assert macro_path() == REPO / "macros" / "OpenFlexure_Collect_and_Stitch.ijm"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake Fiji has a Linux launcher")
def test_install_macro_puts_it_in_the_plugins_menu(tmp_path):
    fake = fake_fiji(tmp_path / "Fiji.app")
    installed = install_macro(fake)
    assert installed == fake.resolve() / "scripts" / "Plugins" / "OpenFlexure" / "Collect_and_Stitch.ijm"
    assert installed.read_bytes() == macro_path().read_bytes()
    with pytest.raises(OfmTilingError, match="no such folder"):
        install_macro(tmp_path / "nowhere")


def test_macro_runs_twice_then_stitch_works(run_macro, ofm_tiling_on_path, copy_scan, tmp_path):
    from ofm_tiling.cli import main

    scan, truth = copy_scan("fiji-macro-twice", grid=(3, 2))
    for run in range(2):
        printed, error, recorded = run_macro(macro_path().read_text(), f"scan=[{scan}]")
        assert error is None and printed.rstrip().endswith("ofm-tiling: done"), (run, printed)
        assert "ERROR" not in printed and len(recorded) == 2
    assert (scan / "stitched-fiji" / MARKER).is_file() and (scan / "stitched-fiji" / "mosaic.jpg").is_file()
    assert main(["stitch", str(scan), "--no-focus-check", "-q"]) == 0
    names, _ = read_tile_configuration(scan / "use" / "TileConfiguration.txt")
    assert len(names) == 6  # the macro's output folder was not taken for part of the scan
