"""Stitch many scans: locally, as many at once as memory and cores allow, or on a Dask cluster.

Every scan is stitched by `stitch_one`, which never raises: a scan's `OfmTilingError` becomes its
one-line error and anything else a one-line "internal error: …", so one failed scan never stops
the others. Locally each scan runs in its own process (a crash, even of the interpreter, costs
only that scan); on a Dask cluster each scan is one task and the workers reach the scans through
a path they all share. The summary table is a pure function of the outcomes.
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from .batchplan import BatchPlan, estimate_scan, plan_batch, threads_per_task
from .errors import OfmTilingError
from .memory import available_memory
from .options import StitchOptions

__all__ = ["ScanOutcome", "stitch_one", "check_batch", "run_local", "run_dask", "format_summary",
           "format_progress", "plan_local", "DEFAULT_OUT_NAME"]

log = logging.getLogger("ofm_tiling")

DEFAULT_OUT_NAME = "stitched"
Report = Callable[["ScanOutcome", int, int], None]


@dataclass(frozen=True)
class ScanOutcome:
    """How one scan of a batch went.

    Attributes
    ----------
    scan : str
        The scan folder as given.
    error : str or None
        One line saying why the scan failed; None when it was stitched.
    seconds : float
        Wall time of its stitch.
    tiles : int or None
        Tiles stitched.
    out_dir : str or None
        Output folder.
    links, links_accepted : int or None
        Pairwise links measured and accepted (from ``stitching-report.json``).
    residual_median, residual_max, displacement_max : float or None
        Solve residuals and the largest correction to the stage positions, in pixels.
    """

    scan: str
    error: str | None = None
    seconds: float = 0.0
    tiles: int | None = None
    out_dir: str | None = None
    links: int | None = None
    links_accepted: int | None = None
    residual_median: float | None = None
    residual_max: float | None = None
    displacement_max: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        return "ok" if self.ok else "failed"


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _figures(report: Path) -> dict:
    """The accuracy figures of a stitching report (absent ones are None)."""
    try:
        summary = json.loads(report.read_text(encoding="utf-8")).get("summary", {})
    except (OSError, ValueError, AttributeError):
        return {}
    keys = ("links", "links_accepted", "residual_median", "residual_max", "displacement_max")
    return {k: summary.get(k) for k in keys if isinstance(summary.get(k), (int, float))}


def stitch_one(scan: str, options: dict, out_name: str = DEFAULT_OUT_NAME) -> ScanOutcome:
    """Stitch one scan into ``scan/out_name``; never raises (the outcome holds the error).

    `options` are keyword options of `ofm_tiling.stitch`. ``workers=None`` means: the cores of
    this machine shared among the tasks a Dask worker runs at once (all cores outside Dask).
    """
    from . import stitch

    t0 = time.perf_counter()
    options = {**options, "workers": options.get("workers") or _dask_threads()}
    try:
        result = stitch(scan, out=Path(scan) / out_name, **options)
        return ScanOutcome(scan, None, time.perf_counter() - t0, len(result.collection.tiles),
                           str(result.out_dir), **_figures(result.report))
    except OfmTilingError as exc:
        error = _one_line(str(exc))
    except MemoryError:
        error = "out of memory"
    except Exception as exc:  # a bug or an unexpected environment problem: still one line
        error = _one_line(f"internal error: {type(exc).__name__}: {exc}")
    return ScanOutcome(scan, error, time.perf_counter() - t0)


def _dask_threads() -> int | None:
    """Threads for a stitch inside a Dask worker (its cores over its task slots); None outside Dask."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    return threads_per_task(os.cpu_count() or 1, worker.state.nthreads)


def check_batch(scans: Sequence[str | os.PathLike], options: dict, out_name: str) -> list[str]:
    """Check a batch before anything runs: scan folders exist, are distinct, options can work.

    Returns the scan folders as strings. Raises `OfmTilingError` naming the first problem.
    """
    if not scans:
        raise OfmTilingError(None, "no scans given")
    if not out_name or Path(out_name).name != out_name or out_name in (".", ".."):
        raise OfmTilingError(None, f"out_name must be a plain folder name, not {out_name!r}")
    StitchOptions(**options).check()
    seen: dict[str, str] = {}
    for scan in scans:
        path = Path(scan)
        if not path.is_dir():
            raise OfmTilingError(path, "scan folder not found" if not path.exists() else "is not a folder")
        key = os.path.realpath(path)
        if key in seen:
            raise OfmTilingError(path, f"given twice (also as {seen[key]})")
        seen[key] = str(scan)
    return [str(s) for s in scans]


# --- running here ---------------------------------------------------------------------------------

def plan_local(scans: Sequence[str], options: dict, *, jobs: int | None = None,
               cores: int | None = None, available: int | None = None) -> BatchPlan:
    """The plan for `scans` on this machine (estimates from JPEG headers, MemAvailable, cores)."""
    cores = cores or os.cpu_count() or 1
    threads = options.get("workers") or 1
    peaks = [estimate_scan(s, focus=options.get("focus", "central"), grid=options.get("grid"),
                           threads=threads).peak_bytes for s in scans]
    return plan_batch(peaks, cores=cores, available_bytes=available or available_memory(), jobs=jobs,
                      one_at_a_time=options.get("backend") == "fiji")


#: Imported once by the fork server, so that each scan's process starts without importing them again
#: (~1 s of CPU per scan). A name that does not import is skipped by the fork server.
PRELOAD = ["ofm_tiling.stitch", "ofm_tiling.collect", "ofm_tiling.register", "ofm_tiling.solve", "ofm_tiling.fuse",
           "ofm_tiling.pyramid", "ofm_tiling.report", "ofm_tiling.layout_picture", "ofm_tiling.imageio",
           "ofm_tiling.batch"]


def _process_context():
    """Fresh processes without this process's threads or locks: forked from a preloaded server, else spawned."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def _child(conn, scan: str, options: dict, out_name: str, quiet: bool) -> None:
    """Process body for one scan: its notes go to stderr prefixed with the scan's name."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (it ends its children)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"ofm-tiling: {Path(scan).name}: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.ERROR if quiet else logging.WARNING)
    log.propagate = False
    conn.send(stitch_one(scan, options, out_name))
    conn.close()


def _died(scan: str, exitcode: int | None, seconds: float) -> ScanOutcome:
    how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    hint = " (out of memory?)" if exitcode == -9 else ""
    return ScanOutcome(scan, f"internal error: its process ended without a result ({how}){hint}", seconds)


def run_local(scans: Sequence[str], options: dict, plan: BatchPlan, *, out_name: str = DEFAULT_OUT_NAME,
              on_done: Report | None = None, quiet: bool = False) -> list[ScanOutcome]:
    """Stitch `scans` here, `plan.jobs` at a time, each in its own process with `plan.threads` threads.

    Returns the outcomes in the order of `scans`; `on_done(outcome, finished, total)` is called as
    each finishes.
    """
    ctx = _process_context()
    options = {**options, "workers": options.get("workers") or plan.threads, "show_progress": False}
    pending = deque(enumerate(scans))
    running: dict = {}  # connection -> (index, process, start time)
    outcomes: list[ScanOutcome | None] = [None] * len(scans)
    while pending or running:
        while pending and len(running) < plan.jobs:
            index, scan = pending.popleft()
            receive, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(send, scan, options, out_name, quiet), daemon=True)
            proc.start()
            send.close()  # only the child holds the sending end: EOF when it dies
            running[receive] = (index, proc, time.perf_counter())
        for conn in wait(list(running)):
            index, proc, t0 = running.pop(conn)
            outcome = _receive(conn, scans[index], proc, t0)
            outcomes[index] = outcome
            if on_done is not None:
                on_done(outcome, sum(o is not None for o in outcomes), len(scans))
    return [o for o in outcomes if o is not None]


def _receive(conn, scan: str, proc, t0: float) -> ScanOutcome:
    """The outcome a child sent, or an internal error when it died before sending one."""
    try:
        outcome = conn.recv()
    except (EOFError, OSError):
        outcome = None
    finally:
        conn.close()
    proc.join()
    return outcome if isinstance(outcome, ScanOutcome) else _died(scan, proc.exitcode, time.perf_counter() - t0)


# --- running on a Dask cluster --------------------------------------------------------------------

def _client(address: str, timeout: float):
    try:
        from distributed import Client
    except ImportError:
        raise OfmTilingError(None, "a Dask scheduler needs the 'distributed' package "
                                   "(pip install 'ofm-tiling[dask]')") from None
    try:
        return Client(address, timeout=f"{timeout}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise OfmTilingError(address, f"cannot reach the Dask scheduler ({_one_line(str(exc))})") from None


def run_dask(scans: Sequence[str], options: dict, address: str, *, out_name: str = DEFAULT_OUT_NAME,
             on_done: Report | None = None, connect_timeout: float = 20.0) -> list[ScanOutcome]:
    """Stitch `scans` on the Dask cluster at `address`, one task per scan.

    The scan paths must mean the same folders on every worker (a shared file system). Returns the
    outcomes in the order of `scans`; `on_done(outcome, finished, total)` as each finishes.
    """
    from distributed import as_completed

    options = {**options, "show_progress": False}
    batch_id = uuid.uuid4().hex[:8]
    with _client(address, connect_timeout) as client:
        futures = {client.submit(stitch_one, scan, options, out_name, pure=False, retries=0,
                                 key=f"ofm-tiling-{batch_id}-{i}"): i for i, scan in enumerate(scans)}
        outcomes: list[ScanOutcome | None] = [None] * len(scans)
        for future in as_completed(futures, loop=client.loop):
            index = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # the worker died, or the task could not be run there
                outcome = ScanOutcome(scans[index], _one_line(f"internal error: {type(exc).__name__}: {exc}"))
            outcomes[index] = outcome
            if on_done is not None:
                on_done(outcome, sum(o is not None for o in outcomes), len(scans))
    return [o for o in outcomes if o is not None]


# --- what the user reads --------------------------------------------------------------------------

def _failure(outcome: ScanOutcome) -> str:
    """``scan: error``, without repeating the scan when the error already starts with it."""
    error = outcome.error or ""
    return error if error.startswith(f"{outcome.scan}:") else f"{outcome.scan}: {error}"


def format_progress(outcome: ScanOutcome, finished: int, total: int) -> str:
    """One line for a finished scan: ``[2/5] ok scan (100 tiles, 12.3 s)`` or its error."""
    if outcome.ok:
        return f"[{finished}/{total}] ok {outcome.scan} ({outcome.tiles} tiles, {outcome.seconds:.1f} s)"
    return f"[{finished}/{total}] failed {_failure(outcome)}"


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _row(o: ScanOutcome) -> list[str]:
    links = "-" if o.links is None else f"{o.links_accepted if o.links_accepted is not None else '?'}/{o.links}"
    residual = "-" if o.residual_median is None and o.residual_max is None else \
        f"{_number(o.residual_median)}/{_number(o.residual_max)}"
    return [o.scan, o.status, "-" if o.tiles is None else str(o.tiles), f"{o.seconds:.1f}", links, residual,
            _number(o.displacement_max, 1), o.out_dir or "-"]


def format_summary(outcomes: Sequence[ScanOutcome], wall: float | None = None) -> str:
    """The summary table of a batch, then every failure's error and a count line (with the batch's
    `wall` time in seconds when given)."""
    header = ["scan", "status", "tiles", "time s", "links ok/all", "residual med/max px", "moved max px", "output"]
    rows = [header] + [_row(o) for o in outcomes]
    widths = [max(len(r[k]) for r in rows) for k in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = [o for o in outcomes if not o.ok]
    lines += [_failure(o) for o in failed]
    total = sum(o.seconds for o in outcomes)
    took = "" if wall is None else f" in {wall:.1f} s"
    lines.append(f"{len(outcomes) - len(failed)} of {len(outcomes)} scans stitched, {len(failed)} failed{took} "
                 f"({total:.1f} s of stitching)")
    return "\n".join(lines)
