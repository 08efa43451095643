"""Running Fiji's Grid/Collection stitching on a collected scan, in this process or as a subprocess.

Fiji is started either in this Python process with pyimagej (needs two jars a plain Fiji does not
ship, see `missing_pyimagej_jars`) or, failing that, as a headless subprocess through the Fiji
launcher with the same generated macro. Either way Fiji's console output (its log, with every pair
it compared) is kept for the checks.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import OfmTilingError
from ..memory import available_memory
from .locate import fiji_launcher, find_fiji, missing_pyimagej_jars
from .macro import DONE, FAILED, FijiJob, plan_job
from .results import FijiPair, merge_channels, read_log_pairs, read_registered

log = logging.getLogger("ofm_tiling")

__all__ = ["FijiRun", "run_fiji", "default_heap_mb"]

METHODS = ("auto", "pyimagej", "launcher")


@dataclass
class FijiRun:
    """What one Fiji run produced.

    Attributes
    ----------
    registered : dict of str to (float, float)
        Fiji's registered positions by tile name, in Fiji's frame (tiles it did not place absent).
    pairs : list of FijiPair
        Every pair Fiji's log says it compared (empty when the log was not captured).
    job : FijiJob
        The options and macro run.
    method : {"pyimagej", "launcher"}
        How Fiji was run.
    fiji : Path
        The Fiji.app folder.
    log : str
        Fiji's console output.
    fallback : str or None
        Why pyimagej was not used, when ``method="auto"`` fell back to the launcher (already logged).
    fused_dir : Path or None
        Temporary folder with Fiji's fused channels (only when asked to fuse); removed by `close`
        or when the bands of `fused` are exhausted.
    """

    registered: dict[str, tuple[float, float]]
    pairs: list[FijiPair]
    job: FijiJob
    method: str
    fiji: Path
    log: str = ""
    fallback: str | None = None
    fused_dir: Path | None = None
    _cleanup: Callable[[], None] | None = field(default=None, repr=False)

    def fused(self) -> tuple[tuple[int, int], Iterator[tuple[int, np.ndarray]]]:
        """Fiji's fused mosaic as ``(shape, bands)`` (see `merge_channels`); cleans up once read."""
        if self.fused_dir is None:
            raise OfmTilingError(None, "this Fiji run kept no fused image")
        shape, bands = merge_channels(self.fused_dir)

        def then_clean() -> Iterator[tuple[int, np.ndarray]]:
            try:
                yield from bands
            finally:
                self.close()

        return shape, then_clean()

    def close(self) -> None:
        """Remove the temporary folders of this run."""
        if self._cleanup is not None:
            self._cleanup()
            self._cleanup = None
        self.fused_dir = None


def default_heap_mb(fraction: float = 0.75) -> int:
    """Java heap for Fiji: `fraction` of the memory available now, in MB."""
    return max(512, int(available_memory() * fraction / 2**20))


class _FallBack(Exception):
    """pyimagej cannot be used here; run the launcher instead (the message says why)."""


def _launcher_command(launcher: Path, macro_file: Path, heap_mb: int | None) -> list[str]:
    cmd = [str(launcher)]
    if heap_mb:
        cmd.append(f"--mem={int(heap_mb)}m")
    cmd.append("--headless")
    if launcher.name.startswith("ImageJ-"):
        cmd.append("--console")  # old launcher: print to this console (Jaunch does by default)
    return cmd + ["-macro", str(macro_file)]


def _follow(proc: subprocess.Popen, lines: list[str], deadline: float | None) -> bool:
    """Read Fiji's output into `lines` until the macro says it is over; True if it did."""
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        log.debug("fiji: %s", line)  # Fiji's console is long (hundreds of optimiser lines)
        if line.startswith(DONE) or line.startswith(FAILED):
            return True  # the macro is over; some headless Fiji versions then fail to exit
        if deadline is not None and time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, 0)
    return False


def _run_launcher(root: Path, macro: str, heap_mb: int | None, work: Path, timeout: float | None) -> str:
    """Run `macro` with the Fiji launcher as a headless subprocess; returns its console output."""
    launcher = fiji_launcher(root)
    if launcher is None:
        raise OfmTilingError(root, "no Fiji launcher found (ImageJ-linux64, fiji-linux-x64, ImageJ-win64.exe...)")
    macro_file = work / "ofm-tiling-stitch.ijm"
    macro_file.write_text(macro, encoding="ascii")
    cmd = _launcher_command(launcher, macro_file, heap_mb)
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace")
    except OSError as exc:
        raise OfmTilingError(launcher, f"cannot run the Fiji launcher ({exc.strerror or exc})") from None
    deadline = None if timeout is None else time.monotonic() + timeout
    lines: list[str] = []
    try:
        finished = _follow(proc, lines, deadline)
        try:
            proc.wait(timeout=60 if finished else None if deadline is None else max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            if not finished:
                raise
            proc.kill()
            proc.wait()
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise OfmTilingError(launcher, f"Fiji did not finish within {timeout or 0:.0f} s") from None
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    if proc.returncode != 0 and not finished:
        tail = " | ".join(line for line in lines[-5:] if line.strip())
        raise OfmTilingError(launcher, f"Fiji stopped with exit code {proc.returncode}: {tail or 'no output'}")
    return "\n".join(lines)


def _bracket_free(path: Path, holder: list[Path]) -> Path:
    """`path`, or a bracket-free symbolic link to it (Fiji's options cannot carry '[' or ']')."""
    if "[" not in str(path) and "]" not in str(path):
        return path
    link_dir = Path(tempfile.mkdtemp(prefix="ofm-tiling-link-"))
    holder.append(link_dir)
    link = link_dir / "use"
    try:
        if "[" in str(link) or "]" in str(link):
            raise OSError("the temporary folder path has brackets too")
        os.symlink(path, link, target_is_directory=True)
    except (OSError, NotImplementedError) as exc:
        raise OfmTilingError(path, "Fiji cannot read a folder whose path contains '[' or ']' and no link "
                                   f"could be made ({exc}): rename the folder") from None
    return link


def _run_pyimagej(root: Path, macro: str, heap_mb: int | None) -> str:
    """Run `macro` in a Fiji started inside this Python process; returns Fiji's console output."""
    try:
        import scyjava
    except ImportError as exc:
        raise _FallBack(f"pyimagej is not installed ({exc})") from None
    if scyjava.jvm_started():
        raise _FallBack("a Java VM is already running in this Python process, so Fiji's jars cannot be added")
    try:
        import imagej
    except ImportError as exc:
        raise _FallBack(f"pyimagej is not installed ({exc})") from None
    if hasattr(scyjava.config, "set_java_constraints"):
        # The default fetches a JDK from the internet; "auto" uses the installed Java (>= 11).
        # ("never" crashes inside pyimagej 1.8.0's Java version guess.)
        scyjava.config.set_java_constraints(fetch="auto")
    # `import imagej` imports imglyb, which asks jgo for net.imglib2:imglib2-imglyb from Maven.
    scyjava.config.endpoints.clear()
    if heap_mb:
        scyjava.config.add_option(f"-Xmx{int(heap_mb)}m")
    try:
        ij = imagej.init(str(root), mode="headless")
    except Exception as exc:  # pyimagej raises plain Exceptions and Java errors alike
        raise _FallBack(f"pyimagej could not start Fiji ({_first_line(exc)})") from None
    # Headless, Fiji's log goes to Java's stdout: capture it, it holds the pairs Fiji compared.
    system = scyjava.jimport("java.lang.System")
    buffer = scyjava.jimport("java.io.ByteArrayOutputStream")()
    saved = system.out
    system.setOut(scyjava.jimport("java.io.PrintStream")(buffer, True, "UTF-8"))
    try:
        ij.py.run_macro(macro)
    except Exception as exc:  # a Java exception from inside Fiji
        raise OfmTilingError(root, f"Fiji failed while stitching ({_first_line(exc)})") from None
    finally:
        system.setOut(saved)
    return str(buffer.toString("UTF-8"))


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _execute(root: Path, macro: str, *, method: str, heap_mb: int | None, work: Path, timeout: float | None,
             step: Callable[[str], None]) -> tuple[str, str, str | None]:
    """Run `macro` by `method`; returns (console output, method used, why pyimagej was not used)."""
    if method not in METHODS:
        raise OfmTilingError(None, f"method must be 'auto', 'pyimagej' or 'launcher', not {method!r}")
    fallback = None
    if method in ("auto", "pyimagej"):
        missing = missing_pyimagej_jars(root)
        try:
            if missing:
                raise _FallBack(f"Fiji lacks {' and '.join(j + '-*.jar' for j in missing)}, which pyimagej "
                                f"needs offline; copy them into {root / 'jars'} (see the README) to run Fiji "
                                "inside Python")
            step(f"starting Fiji from {root} with pyimagej")
            return _run_pyimagej(root, macro, heap_mb), "pyimagej", None
        except _FallBack as why:
            if method == "pyimagej":
                raise OfmTilingError(root, str(why)) from None
            # Logged now, before the long run, rather than added to the notes (about the result).
            fallback = f"{why}; running the Fiji launcher instead"
            log.warning(fallback)
    step(f"running Fiji headless: {fiji_launcher(root) or root}")
    return _run_launcher(root, macro, heap_mb, work, timeout), "launcher", fallback


def _read_outcome(registered: Path, output: str, names: Sequence[str]) -> dict[str, tuple[float, float]]:
    if not registered.is_file():
        tail = " | ".join(line for line in output.splitlines()[-5:] if line.strip())
        raise OfmTilingError(registered, "Fiji wrote no registered layout, so the stitching failed"
                                         + (f": {tail}" if tail else " (see Fiji's messages)"))
    positions = read_registered(registered)
    unknown = [name for name in positions if name not in set(names)]
    if unknown:
        raise OfmTilingError(registered, f"Fiji's layout names {unknown[0]}, which is not one of the collected tiles")
    return positions


def run_fiji(use_dir: str | os.PathLike, *, names: Sequence[str], stage_positions: np.ndarray,
             tile_shape: tuple[int, int], fiji: str | os.PathLike | None = None, layout: str = "positions",
             fuse: bool = False, regression_threshold: float = 0.30, heap_gb: float | None = None,
             method: str = "auto", timeout: float | None = None,
             progress: Callable[[str], None] | None = None) -> FijiRun:
    """Register a collected scan with Fiji's Grid/Collection stitching (and fuse it, if asked).

    Parameters
    ----------
    use_dir : path
        ``SCAN/use`` with the tiles and ``TileConfiguration.txt``.
    names, stage_positions, tile_shape
        The collected tiles, their stage-derived positions and their ``(height, width)``.
    fiji : path, optional
        Fiji.app (default: see `find_fiji`).
    layout : {"positions", "grid"}
        See `plan_job`.
    fuse : bool
        Also let Fiji fuse the mosaic (kept in a temporary folder beside the tiles).
    regression_threshold : float
        The correlation R Fiji needs to link a pair.
    heap_gb : float, optional
        Java heap (default: 75% of the memory available now).
    method : {"auto", "pyimagej", "launcher"}
        ``auto``: pyimagej in this process when it can start offline, else the Fiji launcher as a
        headless subprocess (with a warning saying why).
    timeout : float, optional
        Seconds to wait for a launcher run.
    progress : callable, optional
        Called with a short message at each step (Fiji's console lines are logged at DEBUG level).

    Raises
    ------
    OfmTilingError
        Fiji missing or failing, no registered layout written, no fused image.
    """
    use = Path(use_dir).resolve()
    step = progress or (lambda message: None)
    root = find_fiji(fiji)
    if len(names) < 2:
        raise OfmTilingError(use, "Fiji needs at least 2 tiles to stitch")
    folders: list[Path] = [Path(tempfile.mkdtemp(prefix="ofm-tiling-fiji-"))]

    def cleanup() -> None:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)

    try:
        fiji_use = _bracket_free(use, folders)
        fused_dir = None
        if fuse:  # beside the tiles: the scan's disk has room for a mosaic, /tmp may not
            fused_dir = Path(tempfile.mkdtemp(prefix=".fiji-fused-", dir=use))
            folders.append(fused_dir)
        job = plan_job(fiji_use, names=names, stage_positions=stage_positions, tile_shape=tile_shape, layout=layout,
                       fused_dir=None if fused_dir is None else fiji_use / fused_dir.name,
                       regression_threshold=regression_threshold)
        registered = use / job.registered.name
        registered.unlink(missing_ok=True)  # an earlier run's layout must not pass for this run's
        heap_mb = int(heap_gb * 1024) if heap_gb else default_heap_mb()
        output, used, fallback = _execute(root, job.macro, method=method, heap_mb=heap_mb, work=folders[0],
                                          timeout=timeout, step=step)
        step("reading Fiji's registered positions and log")
        positions = _read_outcome(registered, output, names)
        if fused_dir is not None:
            merge_channels(fused_dir)  # fail now, not halfway through writing, if the image is missing
    except BaseException:
        cleanup()
        raise
    outcome = FijiRun(positions, read_log_pairs(output), job, used, root, output, fallback, fused_dir)
    shutil.rmtree(folders.pop(0), ignore_errors=True)
    outcome._cleanup = weakref.finalize(outcome, cleanup)
    return outcome
