"""Tests of the Fiji backend (ofm_tiling.fiji) and the macros/ collect-and-stitch macro.

Fiji itself cannot be installed here, so the option strings are checked with ImageJ 1's OWN parser
(Debian's libij-java, /usr/share/java/ij.jar, in a Java VM started once per session through
scyjava), and the macros run in real headless ImageJ 1 against a clearly labelled STAND-IN for the
"Grid/Collection stitching" command (tests/fiji_standin/, compiled with javac at session start). The
stand-in records the options it receives and imitates the plugin's output files; it does not stitch.
The `ofm-tiling collect` step of the macro runs a stub script put first on PATH.

A real Fiji is used only by the last test, when OFM_TILING_FIJI=/path/to/Fiji.app is set.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.fiji import (
    COLUMN_ORDERS, GRID_TYPES, ROW_ORDERS, GridSpec, find_fiji, grid_collection_options, infer_grid,
    install_macro, macro_for_scan, macro_path, macro_string, merge_channels, missing_pyimagej_jars,
    read_registered, run_fiji, stitching_macro, tile_name_pattern,
)

IJ_JAR = Path(os.environ.get("OFM_TILING_IJ_JAR", "/usr/share/java/ij.jar"))
STANDIN_SOURCES = Path(__file__).parent / "fiji_standin"
UNSET = "\u0000unset"  # default handed to Macro.getValue: tells "key absent" from any real value

# Dialog labels of Stitching_Grid that the option string must answer (ImageJ turns each into a key
# with Macro.trimKey). Anything the plugin reads and we leave out would inherit the last run's value.
COMMON_LABELS = ["Fusion_method", "Regression_threshold", "Max/avg_displacement_threshold",
                 "Absolute_displacement_threshold", "Computation_parameters", "Image_output"]
POSITIONS_LABELS = ["Type", "Order", "Directory", "Layout_file"] + COMMON_LABELS
GRID_LABELS = ["Type", "Order", "Grid_size_x", "Grid_size_y", "Tile_overlap [%]", "First_file_index_i",
               "Directory", "File_names for tiles", "Output_textfile_name"] + COMMON_LABELS
WANTED_FLAGS = ["Compute_overlap (otherwise apply coordinates from layout file)", "Subpixel_accuracy"]
UNWANTED_FLAGS = ["Add_tiles_as_ROIs", "Invert_X coordinates", "Invert_Y coordinates", "Ignore_Z_stage position",
                  "Downsample_tiles", "Use_virtual_input_images (Slow! Even slower when combined with subpixel "
                  "accuracy during fusion!)"]


# ------------------------------------------------------------------------------------------
# ImageJ 1 in this process (one JVM per session)


@pytest.fixture(scope="session")
def standin_classes(tmp_path_factory) -> Path:
    """The stand-in compiled with javac (fails, never skips, when ImageJ 1 or a JDK is missing)."""
    if not IJ_JAR.is_file():
        pytest.fail(f"ImageJ 1 is missing ({IJ_JAR}): install Debian's libij-java (apt-get install libij-java). "
                    "The Fiji tests check every option string with ImageJ's own parser.")
    javac = shutil.which("javac")
    if javac is None:
        pytest.fail("javac is missing: install a JDK (e.g. apt-get install default-jdk-headless) to compile "
                    "the Grid/Collection stitching stand-in in tests/fiji_standin/")
    out = tmp_path_factory.mktemp("standin-classes")
    sources = sorted(str(p) for p in STANDIN_SOURCES.glob("*.java"))
    subprocess.run([javac, "--release", "11", "-nowarn", "-cp", str(IJ_JAR), "-d", str(out), *sources],
                   check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="session")
def ij(standin_classes):
    """Headless ImageJ 1 through scyjava, with no download and the stand-in command registered."""
    import scyjava

    if scyjava.jvm_started():
        pytest.fail("a Java VM was already started in this test session without ImageJ 1 on its class path")
    # Plain scyjava (no pyimagej): "never" means no JDK download and no Maven.
    scyjava.config.set_java_constraints(fetch="never")
    scyjava.config.endpoints.clear()
    scyjava.config.add_classpath(str(IJ_JAR))
    scyjava.config.add_classpath(str(standin_classes))
    scyjava.config.add_option("-Djava.awt.headless=true")
    scyjava.start_jvm()
    jimport = scyjava.jimport
    standin = jimport("ofmtiling.standin.GridCollectionStandIn")
    standin.register()

    # GenericDialog's own checkbox test (isMatch), reached without constructing the dialog, which
    # headless Java refuses to do.
    unsafe_field = jimport("sun.misc.Unsafe").class_.getDeclaredField("theUnsafe")
    unsafe_field.setAccessible(True)
    dialog_class = jimport("ij.gui.GenericDialog").class_
    string_class = jimport("java.lang.String").class_
    is_match = dialog_class.getDeclaredMethod("isMatch", string_class, string_class)
    is_match.setAccessible(True)
    dialog = unsafe_field.get(None).allocateInstance(dialog_class)
    return SimpleNamespace(jimport=jimport, IJ=jimport("ij.IJ"), Macro=jimport("ij.Macro"),
                           System=jimport("java.lang.System"), Interpreter=jimport("ij.macro.Interpreter"),
                           is_match=is_match, dialog=dialog, standin=standin)


def ij_options(options: str) -> str:
    # What the plugin sees: Macro.getOptions() hands plugins the string with a space appended.
    return options + " "


def ij_value(ij, options: str, label: str) -> str | None:
    """The value ImageJ's Macro.getValue reads for a dialog label, or None when the key is absent."""
    value = str(ij.Macro.getValue(ij_options(options), label, UNSET))
    return None if value == UNSET else value


def ij_flag(ij, options: str, label: str) -> bool:
    """Whether ImageJ's GenericDialog ticks a checkbox with this label (absent means false)."""
    key = str(ij.Macro.trimKey(label))
    return bool(ij.is_match.invoke(ij.dialog, ij_options(options), key + " "))


def read_back(ij, options: str, labels: list[str]) -> dict[str, object]:
    """Every value and flag the plugin would read, keyed by ImageJ's key for each label."""
    values: dict[str, object] = {str(ij.Macro.trimKey(label)): ij_value(ij, options, label) for label in labels}
    for label in WANTED_FLAGS + UNWANTED_FLAGS:
        values[str(ij.Macro.trimKey(label))] = ij_flag(ij, options, label)
    return values


@pytest.fixture
def run_macro(ij, tmp_path):
    """Run IJ1 macro code; returns (printed text, macro error or None, recorded stand-in options)."""
    record = tmp_path / "standin-record.txt"

    def run(code: str, argument: str = "", drop: str = ""):
        record.unlink(missing_ok=True)
        ij.System.setProperty("ofm.standin.record", str(record))
        ij.System.setProperty("ofm.standin.drop", drop)
        buffer = ij.jimport("java.io.ByteArrayOutputStream")()
        stdout = ij.System.out
        ij.System.setOut(ij.jimport("java.io.PrintStream")(buffer, True, "UTF-8"))
        interpreter = ij.Interpreter()
        interpreter.setIgnoreErrors(True)  # errors reported below instead of in a (headless) dialog
        try:
            interpreter.run(code, argument)
        except Exception as exc:  # exit("...") ends the macro with "Macro canceled"
            if "Macro canceled" not in str(exc):
                raise
        finally:
            ij.System.setOut(stdout)
        error = interpreter.getErrorMessage()
        recorded = record.read_text(encoding="utf-8").splitlines() if record.exists() else []
        return str(buffer.toString("UTF-8")), (None if error is None else str(error)), recorded

    return run


# ------------------------------------------------------------------------------------------
# Option strings, read back with ImageJ's parser


PATHS = ["/data/scans/plain/use", "/data/My Scans/scan 2024-05-01 (slide 3)/use",
         "/data/it's \"quoted\"/use", "/data/sc\u00e4n \u00fc\u4e2d/use", "C:\\Users\\Ann\\scan 1\\use"]


@pytest.mark.parametrize("directory", PATHS)
def test_positions_options_read_back_exactly(ij, directory):
    out = "/data/out dir/fused"
    options = grid_collection_options(directory, output_directory=out)
    got = read_back(ij, options, POSITIONS_LABELS + ["Output_directory"])
    expected_dir = directory.replace("\\", "/")
    assert got == {
        "type": "Positions from file", "order": "Defined by TileConfiguration",
        "directory": expected_dir,  # the tile folder, not the output folder
        "layout_file": "TileConfiguration.txt", "fusion_method": "Linear Blending",
        "regression_threshold": "0.30", "max/avg_displacement_threshold": "2.50",
        "absolute_displacement_threshold": "3.50",
        "computation_parameters": "Save computation time (but use more RAM)",
        "image_output": "Write to disk", "output_directory": out,
        "compute_overlap": True, "subpixel_accuracy": True,
        "add_tiles_as_rois": False, "invert_x": False, "invert_y": False, "ignore_z_stage": False,
        "downsample_tiles": False, "use_virtual_input_images": False,
    }


def test_directory_key_is_found_inside_output_directory_when_misordered(ij):
    # The trap the key order avoids: ImageJ finds "directory=" inside "output_directory=".
    options = grid_collection_options("/in/use", output_directory="/out/fused")
    swapped = "output_directory=[/out/fused] " + options.replace(" output_directory=[/out/fused]", "")
    assert ij_value(ij, swapped, "Directory") == "/out/fused"
    assert ij_value(ij, options, "Directory") == "/in/use"
    assert options.index("directory=[/in/use]") < options.index("output_directory=")


def test_absent_flags_are_false_and_other_settings_are_kept(ij):
    options = grid_collection_options("/in/use", compute_overlap=False, subpixel=False, fusion="Average",
                                      regression_threshold=0.125, max_avg_displacement=3,
                                      absolute_displacement=10.5, save_memory=True)
    got = read_back(ij, options, POSITIONS_LABELS)
    assert got["compute_overlap"] is False and got["subpixel_accuracy"] is False
    assert "compute_overlap" not in options and "subpixel" not in options
    assert got["fusion_method"] == "Average"
    assert float(got["regression_threshold"]) == 0.125
    assert float(got["max/avg_displacement_threshold"]) == 3.0
    assert float(got["absolute_displacement_threshold"]) == 10.5
    assert got["computation_parameters"] == "Save memory (but be slower)"
    assert got["image_output"] == "Fuse and display"
    assert ij_value(ij, options, "Output_directory") is None  # not asked for without Write to disk


def _snake_columns_spec() -> GridSpec:
    cells = tuple((x, y) for x in range(3) for y in (range(4) if x % 2 == 0 else range(3, -1, -1)))
    return GridSpec(3, 4, GRID_TYPES[3], COLUMN_ORDERS[0], 25.0, 30.0, cells)


@pytest.mark.parametrize("grid, order, pattern, first, type_, order_text, size", [
    ((4, 3), "raster", "{ii}.jpeg", 0, "Grid: row-by-row", "Right & Down" + " " * 16, (4, 3)),
    ((5, 2), "snake", "{ii}.jpeg", 0, "Grid: snake by rows", "Right & Down" + " " * 16, (5, 2)),
    ((12, 10), "raster", "{iii}.jpeg", 0, "Grid: row-by-row", "Right & Down" + " " * 16, (12, 10)),
    (_snake_columns_spec(), None, "tile_{iii}.tif", 1, "Grid: snake by columns", "Down & Right" + " " * 16, (3, 4)),
    (GridSpec(2, 2, GRID_TYPES[0], ROW_ORDERS[3], 20.0, 20.0), None, "{ii}.jpeg", 0, "Grid: row-by-row",
     "Left & Up", (2, 2)),
], ids=["raster", "snake", "120-tiles-iii", "snake-columns", "left-up"])
def test_grid_options_read_back_exactly(ij, grid, order, pattern, first, type_, order_text, size):
    options = grid_collection_options("/scans/a b/use", layout="grid", grid=grid, order=order,
                                      overlap_percent=None if isinstance(grid, GridSpec) else 30,
                                      file_pattern=pattern, first_index=first)
    got = read_back(ij, options, GRID_LABELS)
    assert got["type"] == type_
    assert got["order"] == order_text  # padding kept: headless, a near miss becomes choice 0
    assert (int(got["grid_size_x"]), int(got["grid_size_y"])) == size
    expected_overlap = grid.overlap_percent if isinstance(grid, GridSpec) else 30
    assert float(got["tile_overlap"]) == pytest.approx(expected_overlap)
    assert int(got["first_file_index_i"]) == first
    assert got["directory"] == "/scans/a b/use"
    assert got["file_names"] == pattern
    assert got["output_textfile_name"] == "TileConfiguration.grid.txt"  # never our TileConfiguration.txt
    assert got["compute_overlap"] and got["subpixel_accuracy"]
    assert not any(got[str(ij.Macro.trimKey(label))] for label in UNWANTED_FLAGS)
    assert None not in got.values(), "every key the grid dialog reads must be given"


@pytest.mark.parametrize("kwargs, says", [
    (dict(directory="/data/scan [2]/use"), "'[' or ']'"),
    (dict(directory="/data/use", output_directory="/out/[x]"), "'[' or ']'"),
    (dict(directory="/data/use ", ), "space"),
    (dict(directory="/data/use", fusion="Linear blending"), "fusion method"),
    (dict(directory="/data/use", layout="grid", grid=(3, 2), overlap_percent=20, file_pattern="tile.jpeg"), "{ii}"),
    (dict(directory="/data/use", layout="grid", grid=(3, 2), overlap_percent=20,
          output_textfile_name="TileConfiguration.txt"), "overwrite"),
    (dict(directory="/data/use", layout="grid", grid=(3, 2)), "overlap"),
    (dict(directory="/data/use", layout="grid", grid=(1, 1), overlap_percent=10), "2 tiles"),
    (dict(directory="/data/use", layout="tiles"), "layout"),
])
def test_options_fiji_would_misread_are_refused_in_one_line(kwargs, says):
    directory = kwargs.pop("directory")
    with pytest.raises(OfmTilingError) as err:
        grid_collection_options(directory, **kwargs)
    assert says in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text", ["plain", 'it\'s "quoted" \\ back', "sc\u00e4n \u4e2d \U0001F52C", "", "\u00e9"])
def test_macro_string_survives_the_macro_interpreter(run_macro, ij, text):
    expression = macro_string(text)
    assert expression.isascii()
    _, error, _ = run_macro(f'call("java.lang.System.setProperty", "ofm.test.string", {expression});')
    assert error is None
    assert str(ij.System.getProperty("ofm.test.string")) == text


def test_stitching_macro_passes_the_same_options_to_the_plugin(run_macro, ij, tmp_path):
    use = tmp_path / "scan \u00e4 1" / "use"
    use.mkdir(parents=True)
    (use / "TileConfiguration.txt").write_text(
        "dim = 2\n00.jpeg; ; (0.0, 0.0)\n01.jpeg; ; (700.0, 0.0)\n", encoding="utf-8")
    out = tmp_path / "fused"
    macro = stitching_macro(use, out)
    assert macro.isascii()
    printed, error, recorded = run_macro(macro)
    assert error is None, printed
    assert recorded == [ij_options(grid_collection_options(use, output_directory=out))]
    assert read_back(ij, recorded[0], POSITIONS_LABELS)["directory"] == use.as_posix()
    assert "ofm-tiling: done" in printed
    assert (out / "img_t1_z1_c1").is_file() and (use / "TileConfiguration.registered.txt").is_file()


# ------------------------------------------------------------------------------------------
# The macros/ collect-and-stitch macro, with `ofm-tiling collect` stubbed on PATH

STUB = """\
#!/bin/sh
# STUB of `ofm-tiling collect` for tests/test_fiji.py: records its arguments, writes a small use/.
printf '%s\\n' "$@" > "$(dirname "$0")/args.txt"
scan="$2"; use="$scan/use"
[ "$4" ] && use="$4"
if [ -e "$scan/stub-fails" ]; then echo "ofm-tiling: $scan: no position folders found"; exit 1; fi
mkdir -p "$use"
printf '# Define the number of dimensions we are working on\\ndim = 2\\n\\n# Define the image coordinates\\n' > "$use/TileConfiguration.txt"
printf '00.jpeg; ; (0.000, 0.000)\\n01.jpeg; ; (700.000, 0.000)\\n02.jpeg; ; (0.000, 500.000)\\n03.jpeg; ; (700.000, 500.000)\\n' >> "$use/TileConfiguration.txt"
echo "Collected 4 tiles (800x600) into $use"
"""


@pytest.fixture
def stub_on_path(tmp_path, monkeypatch) -> Path:
    """A stub `ofm-tiling` first on PATH (Java's exec follows the process's current PATH)."""
    if sys.platform.startswith("win"):
        pytest.skip("the stub command is a POSIX shell script")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "ofm-tiling"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def _stub_args(bin_dir: Path) -> list[str]:
    return (bin_dir / "args.txt").read_text().splitlines()


def test_macro_file_collects_stitches_and_saves(run_macro, ij, stub_on_path, tmp_path):
    scan = tmp_path / "My Scans" / "slide 3 (x40)"
    scan.mkdir(parents=True)
    printed, error, recorded = run_macro(macro_path().read_text(), f"scan=[{scan}]", drop="03.jpeg")
    assert error is None, printed
    assert _stub_args(stub_on_path) == ["collect", str(scan), "--use", str(scan / "use"), "--select", "tag"]
    # The macro's option string reads back exactly like the Python backend's (positions from file).
    assert len(recorded) == 1
    python_options = grid_collection_options(scan / "use", output_directory=None)
    assert read_back(ij, recorded[0], POSITIONS_LABELS) == read_back(ij, python_options, POSITIONS_LABELS)
    assert ij_value(ij, recorded[0], "Output_directory") is None
    # Saved result and the dropped tile named.
    import tifffile

    mosaic = tifffile.imread(scan / "stitched-fiji" / "mosaic.tif")
    assert mosaic.shape == (3, 30, 40) and mosaic.dtype == np.uint8
    assert (scan / "stitched-fiji" / "mosaic.jpg").stat().st_size > 0
    assert "could not place 1 tile(s), missing from the mosaic: 03.jpeg" in printed
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
    assert len(recorded) == 1


def test_macro_file_reports_a_failed_collection(run_macro, stub_on_path, tmp_path):
    scan = tmp_path / "scan"
    (scan / "use").mkdir(parents=True)
    (scan / "use" / "TileConfiguration.txt").write_text("dim = 2\n00.jpeg; ; (0.0, 0.0)\n")  # stale
    (scan / "stub-fails").touch()
    printed, error, recorded = run_macro(macro_path().read_text(), f"scan=[{scan}]")
    assert error is None, printed
    assert "ofm-tiling: ERROR: 'ofm-tiling collect' did not write" in printed
    assert "no position folders found" in printed
    assert recorded == []


def test_macro_file_needs_a_scan_folder_when_given_arguments(run_macro):
    printed, error, recorded = run_macro(macro_path().read_text(), "collect=no")
    assert error is None
    assert "ofm-tiling: ERROR: no scan folder given" in printed and recorded == []


def test_macro_for_scan_fills_in_the_collect_options(run_macro, ij, stub_on_path, tmp_path):
    scan = tmp_path / "scan one"
    scan.mkdir()
    out = tmp_path / "result folder"
    macro = macro_for_scan(scan, out=out, select="sharpest", grid=(2, 2), overlap=0.3)
    assert macro.isascii() and "getArgument()" not in macro
    printed, error, recorded = run_macro(macro)  # no argument: everything is in the macro
    assert error is None, printed
    assert _stub_args(stub_on_path) == ["collect", str(scan), "--use", str(scan / "use"), "--select", "sharpest",
                                        "--grid", "2x2", "--overlap", "0.3"]
    assert read_back(ij, recorded[0], POSITIONS_LABELS)["directory"] == (scan / "use").as_posix()
    assert (out / "mosaic.tif").is_file()
    with pytest.raises(OfmTilingError, match="grid"):
        macro_for_scan(scan, layout="grid")


def test_macro_file_is_plain_ascii_ij1():
    text = macro_path().read_text(encoding="utf-8")
    assert text.isascii()
    assert text.count("args = getArgument();") == 1
    assert 'run("Grid/Collection stitching", options);' in text


# ------------------------------------------------------------------------------------------
# run_fiji through a fake Fiji.app whose launcher runs ImageJ 1 with the stand-in


def _fake_fiji(root: Path, standin_classes: Path | None = None) -> Path:
    """A folder shaped like Fiji.app. With `standin_classes`, its launcher runs real ImageJ 1 + stand-in."""
    (root / "jars").mkdir(parents=True)
    (root / "plugins").mkdir()
    shutil.copyfile(IJ_JAR if IJ_JAR.is_file() else __file__, root / "jars" / "ij-1.53t.jar")
    with zipfile.ZipFile(root / "plugins" / "Stitching_-3.1.9.jar", "w") as jar:
        jar.writestr("plugins.config", "Plugins>Stitching, \"Grid/Collection stitching\", plugin.Stitching_Grid\n")
    launcher = root / "ImageJ-linux64"
    java = shutil.which("java") or "java"
    launcher.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        # FAKE Fiji launcher for tests: records its arguments, then runs the macro in ImageJ 1 with the
        # Grid/Collection stitching STAND-IN (not Fiji).
        printf '%s\\n' "$@" > "$(dirname "$0")/launcher-args.txt"
        while [ "$1" != "-macro" ]; do shift; done
        exec "{java}" -Djava.awt.headless=true -Dofm.standin.drop="$OFM_STANDIN_DROP" \\
            -cp "{IJ_JAR}:{standin_classes}" ofmtiling.standin.RunMacro "$2"
        """))
    launcher.chmod(0o755)
    return root


def _use_folder(use: Path, positions: list[tuple[float, float]]) -> list[str]:
    use.mkdir(parents=True)
    names = [f"{i:02d}.jpeg" for i in range(len(positions))]
    lines = ["# Define the number of dimensions we are working on", "dim = 2", "", "# Define the image coordinates"]
    lines += [f"{n}; ; ({x:.3f}, {y:.3f})" for n, (x, y) in zip(names, positions)]
    (use / "TileConfiguration.txt").write_text("\n".join(lines) + "\n")
    return names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake launcher is a Linux shell script")
@pytest.mark.parametrize("layout", ["positions", "grid"])
def test_run_fiji_falls_back_to_the_launcher_and_reads_the_results(standin_classes, tmp_path, monkeypatch,
                                                                   caplog, layout):
    fake = _fake_fiji(tmp_path / "Fiji.app", standin_classes)
    # A snake-by-rows 3 x 2 scan, in a folder whose path holds brackets (reached through a link).
    stage = [(0, 0), (700, 0), (1400, 0), (1400, 500), (700, 500), (0, 500)]
    use = tmp_path / "scan [copy 2]" / "use"
    names = _use_folder(use, stage)
    (use / "TileConfiguration.registered.txt").write_text("dim = 2\nstale; ; (1.0, 1.0)\n")
    monkeypatch.setenv("OFM_STANDIN_DROP", "04.jpeg")
    caplog.set_level("WARNING", logger="ofm_tiling")
    result = run_fiji(use, fiji=fake, layout=layout, tile_shape=(600, 800), heap_gb=0.5)
    try:
        assert result.method == "launcher"
        assert "imglib2-imglyb-*.jar and imglib2-unsafe-*.jar" in caplog.text  # says which jars are missing
        assert "copy them into" in result.fallback and str(fake / "jars") in result.fallback
        args = (fake / "launcher-args.txt").read_text().splitlines()
        assert args[:3] == ["--mem=512m", "--headless", "--console"] and args[3] == "-macro"
        assert result.names == names
        expected = np.array(stage, float) + [0.5, -0.25]  # what the stand-in "registered"
        assert result.dropped == ["04.jpeg"]
        assert np.allclose(np.delete(result.positions, 4, axis=0), np.delete(expected, 4, axis=0))
        assert np.allclose(result.positions[4], expected[4])  # put back where the stage says
        assert any("04.jpeg" in note for note in result.notes)
        if layout == "grid":
            assert "type=[Grid: snake by rows] order=[Right & Down                ]" in result.options
            assert "grid_size_x=3 grid_size_y=2" in result.options and "file_names=[{ii}.jpeg]" in result.options
        else:
            assert result.options.startswith("type=[Positions from file]")
        assert "[copy 2]" not in result.options  # the link, not the bracketed path, went to Fiji
        shape, bands = result.fused()
        assert shape == (30, 40)
        fused_dir = result.fused_dir
        image = np.concatenate([band for _, band in bands])
        assert image.shape == (30, 40, 3)
        assert image[0, 0].tolist() == [40, 80, 120] and image[29, 39].tolist() == [(40 * c + 68) & 255 for c in (1, 2, 3)]
        assert not fused_dir.exists()  # temporary channels removed once read
    finally:
        result.close()
    assert sorted(p.name for p in use.iterdir() if p.name.startswith(".fiji-fused")) == []


def test_run_fiji_reports_a_failed_stitching(standin_classes, tmp_path):
    fake = _fake_fiji(tmp_path / "Fiji.app", standin_classes)
    use = tmp_path / "scan" / "use"
    _use_folder(use, [(0, 0), (700, 0)])
    with pytest.raises(OfmTilingError, match="registered layout"):
        run_fiji(use, fiji=fake, method="launcher", compute_overlap=False)  # no registration: nothing written
    assert not [p for p in use.iterdir() if p.name.startswith(".fiji-fused")]


# ------------------------------------------------------------------------------------------
# Reading Fiji's files


def test_read_registered_takes_java_numbers_and_finds_dropped_tiles(tmp_path):
    (tmp_path / "TileConfiguration.txt").write_text(
        "dim = 2\n00.jpeg; ; (0.000, 0.000)\n01.jpeg; ; (700.000, 0.000)\n02.jpeg; ; (0.000, 500.000)\n"
        "03.jpeg; ; (700.000, 500.000)\n04.jpeg; ; (1400.000, 500.000)\n")
    registered = tmp_path / "TileConfiguration.registered.txt"
    registered.write_text(textwrap.dedent("""\
        # Define the number of dimensions we are working on
        dim = 2

        # Define the image coordinates
        00.jpeg; ; (1.0E-4, -0.0)
        01.jpeg; ; (703.25, -1.5E0)
        02.jpeg; ; (0.0, 0.0)
        03.jpeg; ; (NaN, 498.0)
        04.jpeg; ; (1.4015E3, 501.0)
        """))
    layout = read_registered(registered)
    assert layout.names == ["00.jpeg", "01.jpeg", "02.jpeg", "03.jpeg", "04.jpeg"]
    assert layout.positions[0].tolist() == [1.0e-4, 0.0] and layout.positions[4].tolist() == [1401.5, 501.0]
    assert np.isnan(layout.positions[3, 0])
    assert layout.dropped == ["02.jpeg", "03.jpeg"]  # at the origin though the stage says (0, 500); unknown
    assert np.allclose(layout.offset, [1.5, 0.0], atol=1.6)


def test_read_registered_keeps_a_tile_that_belongs_at_the_origin(tmp_path):
    registered = tmp_path / "TileConfiguration.registered.txt"
    registered.write_text("dim = 2\na.jpeg; ; (0.0, 0.0)\nb.jpeg; ; (698.0, 2.0)\nc.jpeg; ; (0.0, 0.0)\n")
    stage = {"a.jpeg": (0, 0), "b.jpeg": (700, 0), "c.jpeg": (1400, 0)}
    layout = read_registered(registered, stage=stage)
    assert layout.dropped == ["c.jpeg"]
    assert read_registered(registered).dropped == []  # no stage positions next to it: nothing to compare


def _channel_file(path: Path, data: np.ndarray, writer: str) -> None:
    if writer == "tifffile":
        import tifffile

        tifffile.imwrite(path, data, photometric="minisblack")
    else:
        from PIL import Image

        Image.fromarray(data).save(path, format="TIFF")


def test_merge_channels_reads_fijis_extensionless_channels(tmp_path):
    rng = np.random.default_rng(1)
    planes = [rng.integers(0, 256, (1100, 37), dtype=np.uint8) for _ in range(3)]
    for k, (plane, writer) in enumerate(zip(planes, ["tifffile", "pillow", "tifffile"]), start=1):
        _channel_file(tmp_path / f"img_t1_z1_c{k}", plane, writer)
    shape, bands = merge_channels(tmp_path)
    assert shape == (1100, 37)
    bands = list(bands)
    assert [y0 for y0, _ in bands] == [0, 512, 1024]
    assert all(band.dtype == np.uint8 and band.shape[1:] == (37, 3) for _, band in bands)
    assert np.array_equal(np.concatenate([b for _, b in bands]), np.stack(planes, axis=-1))


def test_merge_channels_repeats_a_single_grey_channel(tmp_path):
    plane = np.arange(12, dtype=np.uint8).reshape(3, 4)
    _channel_file(tmp_path / "img_t1_z1_c1", plane, "pillow")
    shape, bands = merge_channels(tmp_path, band_height=2)
    image = np.concatenate([b for _, b in bands])
    assert shape == (3, 4) and np.array_equal(image, np.repeat(plane[..., None], 3, axis=2))


def test_merge_channels_errors_are_clear(tmp_path):
    with pytest.raises(OfmTilingError, match="no fused image"):
        merge_channels(tmp_path)
    _channel_file(tmp_path / "img_t1_z1_c1", np.zeros((4, 4), np.uint16), "tifffile")
    with pytest.raises(OfmTilingError, match="8-bit"):
        merge_channels(tmp_path)
    _channel_file(tmp_path / "img_t1_z1_c1", np.zeros((4, 4), np.uint8), "tifffile")
    _channel_file(tmp_path / "img_t1_z1_c2", np.zeros((4, 5), np.uint8), "tifffile")
    _channel_file(tmp_path / "img_t1_z1_c3", np.zeros((4, 5), np.uint8), "tifffile")
    with pytest.raises(OfmTilingError, match="channel is 5x4 px"):
        merge_channels(tmp_path)
    (tmp_path / "img_t1_z1_c3").write_bytes(b"not a tiff")
    with pytest.raises(OfmTilingError, match="cannot read"):
        merge_channels(tmp_path)


# ------------------------------------------------------------------------------------------
# Grids


def _positions(cells, step=(700.0, 500.0), jitter=0.0, seed=0):
    rng = np.random.default_rng(seed)
    p = np.array(cells, float) * step
    return p + rng.uniform(-jitter, jitter, p.shape)


@pytest.mark.parametrize("cells, grid_type, order", [
    ([(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)], "Grid: row-by-row", "Right & Down" + " " * 16),
    ([(0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (0, 1)], "Grid: snake by rows", "Right & Down" + " " * 16),
    ([(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)], "Grid: snake by columns", "Down & Right" + " " * 16),
    ([(2, 1), (1, 1), (0, 1), (2, 0), (1, 0), (0, 0)], "Grid: row-by-row", "Left & Up"),
    ([(1, 0), (0, 0), (0, 1), (1, 1), (1, 2), (0, 2)], "Grid: snake by rows", "Left & Down"),
    ([(0, 2), (0, 1), (0, 0), (1, 2), (1, 1), (1, 0)], "Grid: column-by-column", "Up & Right"),
], ids=["raster", "snake", "snake-columns", "raster-from-bottom-right", "snake-from-top-right", "columns-upwards"])
def test_infer_grid_recognises_fijis_orders(cells, grid_type, order):
    spec = infer_grid(_positions(cells, jitter=25), tile_shape=(600, 1000))
    assert (spec.grid_type, spec.order) == (grid_type, order)
    assert (spec.cols, spec.rows) == (max(c for c, _ in cells) + 1, max(r for _, r in cells) + 1)
    assert spec.cells == tuple(cells)
    assert spec.overlap_x_percent == pytest.approx(30, abs=3)
    assert spec.overlap_y_percent == pytest.approx(100 * (1 - 500 / 600), abs=3)


def test_infer_grid_single_row_and_snake_of_many():
    row = infer_grid(_positions([(i, 0) for i in range(5)]), tile_shape=(600, 1000))
    assert (row.cols, row.rows, row.overlap_y_percent) == (5, 1, None)
    assert row.overlap_percent == pytest.approx(30)
    cells = [(x if y % 2 == 0 else 11 - x, y) for y in range(10) for x in range(12)]
    spec = infer_grid(_positions(cells, jitter=40), tile_shape=(600, 1000))
    assert (spec.cols, spec.rows, spec.grid_type) == (12, 10, "Grid: snake by rows")


@pytest.mark.parametrize("cells, says", [
    ([(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)], "not a complete rectangular grid"),
    ([(0, 0), (1, 0), (1, 0), (0, 1)], "same grid position"),
    ([(0, 0), (2, 1), (1, 0), (0, 1), (1, 1), (2, 0)], "not taken row by row"),
    ([(0, 0)], "at least 2 tiles"),
])
def test_infer_grid_refuses_what_fijis_grid_cannot_number(cells, says):
    with pytest.raises(OfmTilingError, match=says):
        infer_grid(_positions(cells), tile_shape=(600, 1000))


def test_infer_grid_refuses_uneven_steps_and_gaps():
    uneven = np.array([(0, 0), (700, 0), (1900, 0)], float)
    with pytest.raises(OfmTilingError, match="not evenly spaced"):
        infer_grid(uneven, tile_shape=(600, 1000))
    gaps = np.array([(0, 0), (1200, 0)], float)
    with pytest.raises(OfmTilingError, match="do not overlap"):
        infer_grid(gaps, tile_shape=(600, 1000))


def test_tile_name_pattern():
    assert tile_name_pattern([f"{i:02d}.jpeg" for i in range(12)]) == ("{ii}.jpeg", 0)
    assert tile_name_pattern([f"{i:03d}.jpeg" for i in range(120)]) == ("{iii}.jpeg", 0)
    assert tile_name_pattern([f"{i:02d}.jpeg" for i in range(95, 105)]) == ("{ii}.jpeg", 95)  # 100 not cut
    with pytest.raises(OfmTilingError, match="03.jpeg"):
        tile_name_pattern(["00.jpeg", "01.jpeg", "02.jpeg", "04.jpeg"])
    with pytest.raises(OfmTilingError, match="numbers"):
        tile_name_pattern(["a.jpeg", "b.jpeg"])


# ------------------------------------------------------------------------------------------
# Finding and equipping Fiji


def test_find_fiji_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("FIJI_HOME", raising=False)
    with pytest.raises(OfmTilingError, match="no such folder") as err:
        find_fiji(tmp_path / "nowhere" / "Fiji.app")
    assert "\n" not in str(err.value)
    (tmp_path / "NotFiji").mkdir()
    with pytest.raises(OfmTilingError, match="not a Fiji folder"):
        find_fiji(tmp_path / "NotFiji")
    fake = _fake_fiji(tmp_path / "Fiji.app")
    (fake / "plugins" / "Stitching_-3.1.9.jar").unlink()
    with pytest.raises(OfmTilingError, match="no Stitching plugin"):
        find_fiji(fake)
    monkeypatch.setenv("FIJI_HOME", str(tmp_path / "NotFiji"))
    with pytest.raises(OfmTilingError, match="FIJI_HOME"):
        find_fiji()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake Fiji has a Linux launcher")
def test_find_fiji_accepts_the_folder_its_launcher_and_fiji_home(tmp_path, monkeypatch):
    fake = _fake_fiji(tmp_path / "Fiji.app")
    assert find_fiji(fake) == fake.resolve()
    assert find_fiji(fake / "ImageJ-linux64") == fake.resolve()
    monkeypatch.setenv("FIJI_HOME", str(fake))
    assert find_fiji() == fake.resolve()
    monkeypatch.delenv("FIJI_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/Fiji.app is one of the usual places
    assert find_fiji() == fake.resolve()


def test_missing_pyimagej_jars(tmp_path):
    fake = _fake_fiji(tmp_path / "Fiji.app")
    assert missing_pyimagej_jars(fake) == ["imglib2-imglyb", "imglib2-unsafe"]
    (fake / "jars" / "imglib2-unsafe-1.0.0.jar").touch()
    (fake / "jars" / "imglib2-imglyb-1.1.0.jar").touch()
    assert missing_pyimagej_jars(fake) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake Fiji has a Linux launcher")
def test_install_macro_puts_it_in_the_plugins_menu(tmp_path):
    fake = _fake_fiji(tmp_path / "Fiji.app")
    installed = install_macro(fake)
    assert installed == fake.resolve() / "scripts" / "Plugins" / "OpenFlexure" / "Collect_and_Stitch.ijm"
    assert installed.read_bytes() == macro_path().read_bytes()


# ------------------------------------------------------------------------------------------
# A real Fiji, when one is given


@pytest.mark.fiji
@pytest.mark.skipif(not os.environ.get("OFM_TILING_FIJI"),
                    reason="set OFM_TILING_FIJI=/path/to/Fiji.app to run against a real Fiji")
def test_real_fiji_stitches_a_small_scan(tmp_path):
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(7)
    texture = gaussian_filter(rng.random((900, 1300, 3)), sigma=(4, 4, 0))
    texture = ((texture - texture.min()) / np.ptp(texture) * 255).astype(np.uint8)
    tile_h, tile_w = 400, 520
    truth = [(x, y) for y in (0, 300) for x in (0, 380, 760)]  # 3 x 2, row by row, ~27% overlap
    use = tmp_path / "scan" / "use"
    stage = [(x + dx, y + dy) for (x, y), (dx, dy) in zip(truth, rng.integers(-15, 16, (6, 2)))]
    names = _use_folder(use, stage)
    for name, (x, y) in zip(names, truth):
        Image.fromarray(texture[y:y + tile_h, x:x + tile_w]).save(use / name, quality=95)
    result = run_fiji(use, fiji=os.environ["OFM_TILING_FIJI"], tile_shape=(tile_h, tile_w), timeout=600)
    try:
        assert result.dropped == []
        found = result.positions - result.positions[0]
        assert np.abs(found - (np.array(truth) - truth[0])).max() < 2.0
        shape, bands = result.fused()
        assert abs(shape[0] - 700) <= 3 and abs(shape[1] - 1280) <= 3
        image = np.concatenate([b for _, b in bands])
        assert image.shape == (*shape, 3) and image.std() > 10
    finally:
        result.close()


# ------------------------------------------------------------------------------------------
# The whole `stitch --backend fiji` run, through the fake Fiji.app with the STAND-IN plugin


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake launcher is a Linux shell script")
def test_stitch_with_fiji_backend_gives_the_same_outputs(standin_classes, scans, tmp_path):
    import json

    import tifffile

    from ofm_tiling.cli import main
    from ofm_tiling.tileconfig import read_tile_configuration

    fake = _fake_fiji(tmp_path / "Fiji.app", standin_classes)
    source, truth = scans("fiji-backend", grid=(3, 2))
    scan = tmp_path / "scan"
    shutil.copytree(source, scan)
    assert main(["stitch", str(scan), "--backend", "fiji", "--fiji", str(fake), "--compression", "deflate", "-q"]) == 0
    out = scan / "stitched"
    for name in ("mosaic.ome.tif", "preview.jpg", "stitching-report.json", "layout.png"):
        assert (out / name).is_file(), name
    names, registered = read_tile_configuration(scan / "use" / "TileConfiguration.registered.txt")
    _, stage = read_tile_configuration(scan / "use" / "TileConfiguration.txt")
    # The stand-in "registers" every tile at its stage position + (0.5, -0.25): same layout up to the origin.
    np.testing.assert_allclose(registered - registered.min(0), stage - stage.min(0), atol=1e-3)
    mosaic = tifffile.imread(out / "mosaic.ome.tif")
    assert mosaic.shape == (30, 40, 3)  # what the stand-in fused: Fiji's three channels merged back to RGB
    assert mosaic[0, 0].tolist() == [40, 80, 120]
    report = json.loads((out / "stitching-report.json").read_text())
    assert report["extra"]["backend"] == "fiji" and len(report["tiles"]) == 6
    assert not [p for p in (scan / "use").iterdir() if p.name.startswith(".fiji-fused")]
