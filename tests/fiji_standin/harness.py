"""Test harness of the Fiji tests (tests/test_fiji_*.py); NOT Fiji.

* (fixtures.py) ImageJ 1 (Debian's libij-java, /usr/share/java/ij.jar) in this process through scyjava, once per
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
import sys
import textwrap
import zipfile
from pathlib import Path

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


from conftest import REAL_FIJI, REPO, real_fiji  # noqa: E402,F401  (one home for the recorded runs)


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
