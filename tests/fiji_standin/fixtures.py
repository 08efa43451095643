"""Pytest fixtures of the Fiji tests (a plugin: ``pytest_plugins = ("fiji_standin.fixtures",)``); NOT Fiji.

`standin_classes` compiles the clearly labelled STAND-IN for "Grid/Collection stitching"; `ij` starts
ImageJ 1 (Debian's libij-java) in this process through scyjava, once per session, with the stand-in
registered; `run_macro` runs IJ1 macro code in it; `ofm_tiling_on_path` puts an `ofm-tiling` command
running this source tree first on PATH. Helpers without fixtures are in harness.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from .harness import IJ_JAR, REPO, STANDIN_SOURCES, command_on_path


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


@pytest.fixture
def ofm_tiling_on_path(tmp_path, monkeypatch) -> Path:
    """An `ofm-tiling` command first on PATH that runs this source tree."""
    script = f"#!/bin/sh\nPYTHONPATH=\"{REPO}\" exec \"{sys.executable}\" -m ofm_tiling.cli \"$@\"\n"
    return command_on_path(tmp_path / "ofm-bin", script, monkeypatch)
