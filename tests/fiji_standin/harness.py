"""Test harness of the Fiji tests (tests/test_fiji_*.py); NOT Fiji.

* ImageJ 1 (Debian's libij-java, /usr/share/java/ij.jar) in this process through scyjava, once per
  session, with the clearly labelled STAND-IN for "Grid/Collection stitching" (GridCollectionStandIn.java,
  compiled with javac at session start) registered as a command;
* ImageJ's own option parser (`read_back`), to check option strings as the plugin reads them;
* a fake Fiji.app whose launcher runs ImageJ 1 with the stand-in (`fake_fiji`);
* the recorded real Fiji runs in ../shared/reference/real-fiji/ (`real_fiji`), beside the repository.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

IJ_JAR = Path(os.environ.get("OFM_TILING_IJ_JAR", "/usr/share/java/ij.jar"))
STANDIN_SOURCES = Path(__file__).parent
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

    def run(code: str, argument: str = "", drop: str = "", replay: str | os.PathLike = ""):
        record.unlink(missing_ok=True)
        ij.System.setProperty("ofm.standin.record", str(record))
        ij.System.setProperty("ofm.standin.drop", drop)
        ij.System.setProperty("ofm.standin.replay", str(replay))
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


def fake_fiji(root: Path, standin_classes: Path | None = None) -> Path:
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
        cp "$2" "$(dirname "$0")/last-macro.ijm"
        exec "{java}" -Djava.awt.headless=true -Dofm.standin.drop="$OFM_STANDIN_DROP" \\
            -Dofm.standin.replay="$OFM_STANDIN_REPLAY" \\
            -cp "{IJ_JAR}:{standin_classes}" ofmtiling.standin.RunMacro "$2"
        """))
    launcher.chmod(0o755)
    return root


def use_folder(use: Path, positions: list[tuple[float, float]]) -> list[str]:
    use.mkdir(parents=True)
    names = [f"{i:02d}.jpeg" for i in range(len(positions))]
    lines = ["# Define the number of dimensions we are working on", "dim = 2", "", "# Define the image coordinates"]
    lines += [f"{n}; ; ({x:.3f}, {y:.3f})" for n, (x, y) in zip(names, positions)]
    (use / "TileConfiguration.txt").write_text("\n".join(lines) + "\n")
    return names


REPO = Path(__file__).resolve().parents[2]
# ../shared beside the repository clone (CI); from a worktree, the nearest folder above that has it.
_RECORDED = Path("shared", "reference", "real-fiji")
REAL_FIJI = next((p / _RECORDED for p in REPO.parents if (p / _RECORDED).is_dir()), REPO.parent / _RECORDED)


def real_fiji(case: str) -> Path:
    """A recorded real Fiji run (``blank-glass`` or ``normal``); the test is skipped, visibly, without it."""
    folder = REAL_FIJI / case
    if not (folder / "fiji-console.log").is_file():
        pytest.skip(f"the recorded real Fiji runs are not beside the repository ({folder} is missing)")
    return folder


def real_truth(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(true top-left corners, blank-glass flags) of a recorded run's tiles."""
    with open(folder / "truth-positions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    truth = np.array([[float(r["true_x"]), float(r["true_y"])] for r in rows])
    return truth, np.array([r["blank_glass"] == "True" for r in rows])


def command_on_path(folder: Path, script: str, monkeypatch) -> Path:
    """An `ofm-tiling` shell script in `folder`, first on PATH (Java's exec follows the current PATH)."""
    if sys.platform.startswith("win"):
        pytest.skip("the ofm-tiling stand-in command is a POSIX shell script")
    folder.mkdir()
    command = folder / "ofm-tiling"
    command.write_text(script)
    command.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return command


@pytest.fixture
def ofm_tiling_on_path(tmp_path, monkeypatch) -> Path:
    """An `ofm-tiling` command first on PATH that runs this source tree."""
    script = f"#!/bin/sh\nPYTHONPATH=\"{REPO}\" exec \"{sys.executable}\" -m ofm_tiling.cli \"$@\"\n"
    return command_on_path(tmp_path / "ofm-bin", script, monkeypatch)
