"""What the ``ofm-tiling fiji-macro`` command prints: the backend's macro, the option strings the
shipped macro runs, and the checks of a Fiji run made by that macro (so the macro holds no rule).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import OfmTilingError
from ..files import MARKER, check_output_dir
from ..tileconfig import read_tile_configuration, write_tile_configuration
from .checks import check_fiji
from .macro import fuse_checked_options, plan_job
from .options import CHECKED_FILE, LAYOUT_FILE
from .results import read_log_pairs, read_registered

__all__ = ["fiji_macro", "OUTPUTS"]

#: What `fiji_macro` can print.
OUTPUTS = ("macro", "options", "fuse-options", "check")
_MARKER_TEXT = "Made by ofm-tiling's Fiji macro; replaced on every run.\n"


def _tile_shape(use: Path, name: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(use / name) as im:
            return im.height, im.width
    except OSError as exc:
        raise OfmTilingError(use / name, f"cannot read the tile ({exc})") from None


def _collected(use: Path) -> tuple[list[str], np.ndarray, tuple[int, int]]:
    names, stage = read_tile_configuration(use / LAYOUT_FILE)
    if not names:
        raise OfmTilingError(use / LAYOUT_FILE, "no tiles listed")
    return names, stage, _tile_shape(use, names[0])


def check_macro_run(use: Path, log: Path | None, out: Path) -> str:
    """Check the registration Fiji made in `use`, write the checked layout and prepare `out`."""
    names, stage, tile_shape = _collected(use)
    registered = read_registered(use / LAYOUT_FILE.replace(".txt", ".registered.txt"))
    text = ""
    if log is not None:
        try:
            text = log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise OfmTilingError(log, f"cannot read Fiji's log ({exc.strerror or exc})") from None
    placement = check_fiji(names, stage, tile_shape, registered, read_log_pairs(text))
    positions = placement.positions - placement.positions.min(axis=0)
    write_tile_configuration(use / CHECKED_FILE, names, positions)
    check_output_dir(out, parameter="out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(_MARKER_TEXT)
    except OSError as exc:
        raise OfmTilingError(out, f"cannot write here ({exc.strerror or exc})") from None
    lines = [f"ofm-tiling: note: {note}" for note in placement.notes]
    return "\n".join(lines + [f"ofm-tiling: checked positions in {use / CHECKED_FILE}"])


def fiji_macro(scan: str | os.PathLike, *, use: str | os.PathLike | None = None, layout: str = "positions",
               output: str = "macro", log: str | os.PathLike | None = None,
               out: str | os.PathLike | None = None) -> str:
    """The text ``ofm-tiling fiji-macro`` prints for a scan.

    Parameters
    ----------
    scan : path
        The scan folder.
    use : path, optional
        Its collected tiles (default ``scan/use``).
    layout : {"positions", "grid"}
        Fiji's layout, as for the Fiji backend (the grid is read from the collected tiles).
    output : {"macro", "options", "fuse-options", "check"}
        ``macro``: the macro the Fiji backend runs; ``options``: its option string;
        ``fuse-options``: the option string that fuses the checked positions; ``check``: check
        the registration Fiji wrote into `use` (with its `log`), write
        ``TileConfiguration.checked.txt`` and make the output folder `out`, marked as
        ofm-tiling's own; returns the notes and the file written.
    log : path, optional
        Fiji's log of the run to check (without it, the shifts implied by Fiji's positions are
        checked).
    out : path, optional
        The macro's output folder (default ``scan/stitched-fiji``).
    """
    scan_path = Path(scan).resolve()
    use_dir = Path(use).resolve() if use is not None else scan_path / "use"
    if output not in OUTPUTS:
        raise OfmTilingError(None, f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")
    if output == "fuse-options":
        return fuse_checked_options(use_dir)
    if output == "check":
        out_dir = Path(out).resolve() if out is not None else scan_path / "stitched-fiji"
        return check_macro_run(use_dir, None if log is None else Path(log), out_dir)
    if layout == "grid":
        names, stage, tile_shape = _collected(use_dir)
    else:  # the positions layout needs nothing of the tiles: the macro can ask before collecting
        names, stage, tile_shape = [], np.zeros((0, 2)), (0, 0)
    job = plan_job(use_dir, names=names, stage_positions=stage, tile_shape=tile_shape, layout=layout)
    return job.options if output == "options" else job.macro.rstrip("\n")
