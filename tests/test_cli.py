"""The command line: every option checked before any work, one line per problem, a light start."""
import subprocess
import sys

import pytest

from ofm_tiling.cli import main
from ofm_tiling.errors import OptionError
from ofm_tiling.options import StitchOptions
from ofm_tiling.stitch import stitch


@pytest.mark.parametrize("args, flag, problem", [
    (["--quality", "0"], "--quality", "must be an integer from 1 to 100, got 0"),
    (["--quality", "101"], "--quality", "must be an integer from 1 to 100, got 101"),
    (["--workers", "0"], "--workers", "must be a whole number of at least 1, not 0"),
    (["--grid", "3x2"], "--overlap", "must be a fraction from 0 to below 1 with grid"),
    (["--overlap", "0.3"], "--overlap", "is used only with grid"),
    (["--keep-fiji-mosaic"], "--keep-fiji-mosaic", "is used only with backend 'fiji'"),
])
def test_bad_option_values_stop_before_any_work(copy_scan, capsys, args, flag, problem):
    scan, _ = copy_scan("options", grid=(2, 2))
    before = sorted(p.name for p in scan.iterdir())
    assert main(["stitch", str(scan), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ofm-tiling: error: {flag}: {problem}"] or (len(err) == 1 and err[0].startswith(
        f"ofm-tiling: error: {flag}: {problem}"))
    assert sorted(p.name for p in scan.iterdir()) == before  # nothing collected, nothing written


def test_library_errors_name_parameters(copy_scan):
    scan, _ = copy_scan("options", grid=(2, 2))
    with pytest.raises(OptionError, match=r"^quality must be an integer from 1 to 100, got 0$") as err:
        stitch(scan, quality=0)
    assert err.value.parameter == "quality"
    with pytest.raises(OptionError, match=r"^backend must be 'builtin' or 'fiji', not 'imagej'$"):
        stitch(scan, options=StitchOptions(backend="imagej"))
    with pytest.raises(TypeError):
        stitch(scan, colour="red")  # not an option at all: a programming error, not a user one
    assert not (scan / "use").exists()


def test_choices_are_refused_by_the_parser_in_one_line(capsys):
    with pytest.raises(SystemExit) as code:
        main(["stitch", "somewhere", "--compression", "lzw"])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'lzw'" in err and "Traceback" not in err


def test_help_starts_without_loading_the_image_stack():
    """`ofm-tiling --help` must be quick: numpy, scipy, Pillow and tifffile are not imported for it."""
    code = ("import sys; from ofm_tiling.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('numpy', 'scipy', 'PIL', 'tifffile', 'imagecodecs') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    done = subprocess.run([sys.executable, "-m", "ofm_tiling.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "stitch" in done.stdout


def test_package_facade_keeps_its_functions():
    import ofm_tiling
    import ofm_tiling.collect  # noqa: F401  (the submodule of the same name must not hide the function)
    import ofm_tiling.stitch  # noqa: F401

    assert callable(ofm_tiling.collect) and callable(ofm_tiling.stitch)
    assert ofm_tiling.stitch.__module__ == "ofm_tiling.stitch"
