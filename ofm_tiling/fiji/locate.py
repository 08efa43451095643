"""Finding Fiji: the Fiji.app folder, its launcher, its Stitching plugin and the jars pyimagej needs."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import OfmTilingError

__all__ = ["find_fiji", "fiji_launcher", "missing_pyimagej_jars"]

#: Jars pyimagej needs on top of a plain Fiji.app to start offline (Maven artifact ids).
PYIMAGEJ_JARS = ("imglib2-imglyb", "imglib2-unsafe")

USUAL_FIJI_PLACES = ("~/Fiji.app", "~/Fiji", "~/fiji-linux64/Fiji.app", "~/fiji-win64/Fiji.app",
                     "~/Downloads/Fiji.app", "~/Applications/Fiji.app", "/Applications/Fiji.app",
                     "/opt/Fiji.app", "/opt/fiji/Fiji.app", "/usr/local/Fiji.app", "C:/Fiji.app",
                     "%LOCALAPPDATA%/Fiji.app", "%PROGRAMFILES%/Fiji.app")

# Old ImageJ launcher names first where they are a real binary; Jaunch (Fiji since 2025) second.
_LAUNCHERS = {
    "linux": ("ImageJ-linux64", "fiji-linux-x64", "fiji-linux-arm64", "fiji", "ImageJ-linux32"),
    "win32": ("ImageJ-win64.exe", "fiji-windows-x64.exe", "fiji-windows-arm64.exe", "fiji.bat",
              "ImageJ-win32.exe"),
    "darwin": ("Contents/MacOS/ImageJ-macosx", "Contents/MacOS/fiji-macos-arm64",
               "Contents/MacOS/fiji-macos-x64", "Contents/MacOS/fiji-macos-universal", "fiji"),
}


def fiji_launcher(fiji: str | os.PathLike) -> Path | None:
    """The Fiji launcher executable inside a Fiji.app folder for this platform, or None."""
    root = Path(fiji)
    platform = "win32" if sys.platform.startswith("win") else "darwin" if sys.platform == "darwin" else "linux"
    for name in _LAUNCHERS[platform]:
        candidate = root / name
        if candidate.is_file():
            return candidate
    return None


def _stitching_jar(root: Path) -> Path | None:
    for folder in (root / "plugins", root / "jars"):
        for jar in sorted(folder.glob("Stitching_*.jar")) if folder.is_dir() else ():
            return jar
    return None


def _fiji_problem(root: Path) -> str | None:
    if not root.exists():
        return "no such folder"
    if not root.is_dir():
        return "not a folder"
    jars = root / "jars"
    if not jars.is_dir() or not any(jars.glob("*.jar")):
        return "not a Fiji folder (no jars/ folder with ImageJ's .jar files)"
    if fiji_launcher(root) is None:
        return "not a Fiji folder (no Fiji launcher such as ImageJ-linux64 or fiji-linux-x64)"
    if _stitching_jar(root) is None:
        return ("this Fiji has no Stitching plugin (plugins/Stitching_*.jar): update Fiji "
                "(Help > Update...) with the Fiji update site enabled")
    return None


def _fiji_root(path: Path) -> Path:
    """Fiji.app from a path that may be the folder, its launcher or macOS's Contents/MacOS."""
    path = path.expanduser()
    if path.is_file():
        path = path.parent
    if path.name == "MacOS" and path.parent.name == "Contents":
        path = path.parent.parent
    return path


def find_fiji(path: str | os.PathLike | None = None) -> Path:
    """Locate a Fiji.app folder.

    Parameters
    ----------
    path : path, optional
        Fiji.app (or its launcher). Default: ``$FIJI_HOME``, else the usual install places
        (``~/Fiji.app``, ``/opt/Fiji.app``, ``/Applications/Fiji.app``, ``~/fiji-linux64/Fiji.app``...).

    Returns
    -------
    Path
        The Fiji.app folder, with a launcher, ``jars/`` and the Stitching plugin.

    Raises
    ------
    OfmTilingError
        One line saying what is missing.
    """
    if path is not None or os.environ.get("FIJI_HOME"):
        given = Path(path if path is not None else os.environ["FIJI_HOME"])
        root = _fiji_root(given)
        problem = _fiji_problem(root)
        if problem:
            where = "" if path is not None else " (from FIJI_HOME)"
            raise OfmTilingError(given, problem + where)
        return root.resolve()
    looked = []
    for place in USUAL_FIJI_PLACES:
        candidate = Path(os.path.expandvars(place)).expanduser()
        if "%" in str(candidate):
            continue
        looked.append(str(candidate))
        if _fiji_problem(candidate) is None:
            return candidate.resolve()
    raise OfmTilingError(None, "Fiji not found: install it from https://fiji.sc, then give its Fiji.app folder (fiji) "
                               f"or set FIJI_HOME (looked in {', '.join(looked[:4])}...)")


def missing_pyimagej_jars(fiji: str | os.PathLike) -> list[str]:
    """Jars pyimagej needs to start offline that this Fiji.app lacks (Maven artifact ids).

    pyimagej's ``imglyb`` needs ``net.imglib2:imglib2-imglyb`` and its dependency
    ``net.imglib2:imglib2-unsafe``; a plain Fiji ships neither and pyimagej would fetch them from
    Maven. Copy the two jars into ``Fiji.app/jars/`` to use pyimagej without network.
    """
    root = Path(fiji)
    present = [p.name for folder in (root / "jars", root / "plugins") if folder.is_dir()
               for p in folder.rglob("*.jar")]
    return [artifact for artifact in PYIMAGEJ_JARS
            if not any(name.startswith(artifact + "-") and name[len(artifact) + 1:][:1].isdigit()
                       for name in present)]
