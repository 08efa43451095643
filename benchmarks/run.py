"""Benchmark ofm-tiling on full-size smart-stack scans, side by side with openflexure-stitching.

One run measures, on the same generated scan with known truth:

* **ofm-tiling stitch** (built-in backend) as one command: wall time, CPU time (user + sys),
  peak resident memory, and its own stage timings (collect, registration, fusion + writing);
* each stage again in its own process, so each has its own peak memory:
  collect **indexing** (JPEG header reads, selection of the tagged image, ordering, layout; the
  files are already in the page cache, and the figure is the median of 3 repeats after a first
  one in the same process), collect **copying** (a full ``collect`` minus indexing),
  **registration** (pairwise registration + global solve) and **fusion + writing** (feathered
  fusion streamed into the JPEG-compressed pyramidal OME-TIFF and its preview);
* the **floor**: what any stitcher producing the same output must at least do. It is the sum of
  (a) decoding every collected (central) tile once at full resolution in RGB on ``--workers``
  threads, with ``ofm_tiling.imageio.read_rgb`` (libjpeg-turbo through imagecodecs, straight into
  numpy: the decoder the fusion uses, and about 3x faster here than Pillow plus a conversion to
  numpy), and (b) writing an OME-TIFF of exactly our mosaic's size with the same
  writer and settings (``ofm_tiling.pyramid.write_ome_tiff``: 512 px JPEG tiles at the default quality,
  full pyramid, preview), from bands assembled by placing decoded tiles edge to edge on a grid
  (real image content, so JPEG costs the same; no registration, no overlap, no blending). Our
  total is reported as a ratio of it. Each run of our stitch is followed at once by a run of the
  floor (``--repeat`` pairs, full preset 3), so both meet the machine in the same state; the best
  of each counts (this shared 2-core machine varies by about 15 % from run to run);
* **openflexure-stitching 0.3.1** in its own virtual environment (``benchmarks/.venv-ofs``,
  created on first use with pip: ``openflexure-stitching==0.3.1`` and ``pyvips-binary``, the
  libvips that its ``--stitch_tiff`` needs), run as ``openflexure-stitch FOLDER -o OUT
  --stitch_tiff`` on a fresh flat folder holding copies of our collected tiles (``use/*.jpeg``,
  byte-identical to the central images, EXIF included), because it writes caches and plots into
  its input: wall, CPU, peak memory, and its positions (``OUT/OFMTileConfiguration.txt``);
* **registration accuracy** of both against the truth: tile corners minus true corners, after
  removing one global offset (the median over textured tiles, per axis); median and max distance
  over textured tiles, blank-glass tiles listed separately; the stage positions alone as baseline;
* a **scaling** run (several grid sizes at a reduced tile size) with time and peak memory of both
  tools, drawn as ``scaling.png``;
* **memory against scan length**: our stitch alone on scans 20 tiles wide of the main tile size
  (central planes only) and of different lengths (full preset: 20x3 and 20x10), peak RSS of each;
* the two **JPEG decoders** on the same tiles, alternating on one thread (ms per tile);
* **overlap agreement on real tiles without stage metadata** (``benchmarks/graph_paper.py``): the
  graph-paper tiles in ``shared/data/``, placed nominally, by Fiji and by ofm-tiling;
* the **all-in-focus** cost: ``ofm_tiling.allinfocus.edf_from_paths`` on a few 9-plane positions of the
  main scan (seconds per position).

Every measured thing runs in its own child process; wall time is measured around it, CPU time
and peak RSS come from ``os.wait4`` (the child and everything it waited for), and the peak of the
summed RSS of the process tree is also sampled with psutil when it is installed. The 1-minute load
average is recorded before each measurement (the machine may be shared).

Scans are generated with ``ofm_tiling.synthetic.make_scan`` (procedural H&E-like texture, v2
metadata, stage error up to 25 px, a couple of blank-glass tiles) into ``benchmarks/cache/`` and
reused by later runs. Run folders go to ``benchmarks/work/``. Both are git-ignored.

Usage::

    python benchmarks/run.py                    # full: 10x10 positions x 9 planes of 3280x2464,
                                                # scaling 4x4, 8x8, 16x16 of 820x616; writes
                                                # BENCHMARKS.md, benchmarks/results.json and
                                                # benchmarks/scaling.png (~30-60 min on 2 cores)
    python benchmarks/run.py --preset small     # 4x4 of 1640x1232, a few minutes
    python benchmarks/run.py --preset tiny --no-ofs --work /tmp/w --cache /tmp/c   # smoke test
    python benchmarks/run.py --grid 6x5 --tile 1640x1232 --planes 9 --no-scaling

Options: ``--grid CxR --tile WxH --planes N --blank N`` (main scan), ``--scaling 4x4,8x8``
and ``--scaling-tile WxH`` (``--no-scaling`` to skip), ``--no-ofs``, ``--no-edf``, ``--no-memory``
(also skipped with ``--grid`` or ``--tile``), ``--repeat N``
(pairs of runs of our stitch and of the floor, interleaved; the best of each is reported, all are kept),
``--workers N`` (default 2), ``--ofs-timeout S``, ``--cache DIR``, ``--work DIR``, and
``--results``, ``--markdown``, ``--plot`` for the output files (by default only the full preset
writes the committed ``BENCHMARKS.md``, ``benchmarks/results.json`` and ``benchmarks/scaling.png``;
other presets write into the work folder). A hand-written section of ``BENCHMARKS.md`` between
``<!-- notes:begin -->`` and ``<!-- notes:end -->`` is kept when the file is regenerated.

The harness is split by subject: ``measure.py`` (running a child process and measuring it),
``tasks.py`` (the measured child tasks), ``scans.py`` (generated scans and their cache),
``bench.py`` (everything measured on one scan), ``ofs.py`` (openflexure-stitching and accuracy),
``summary.py`` (headline figures and targets), ``render.py`` and ``plot.py`` (BENCHMARKS.md and
``scaling.png``). This file holds the command line and `main`, the order of the whole run.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from bench import bench_scan, memory_row, scaling_row
from measure import loadavg, log, machine_info
from ofs import ensure_ofs_venv, ofs_versions
from render import kept_notes, render
from scans import ensure_scan, fmt_pair
from summary import summarise, targets

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

PRESETS = {
    "full": dict(grid=(10, 10), tile=(3280, 2464), planes=9, blank=2, scaling=[(4, 4), (8, 8), (16, 16)],
                 scaling_tile=(820, 616), scaling_planes=3, edf_positions=3, repeat=3, memory=[(20, 3), (20, 10)]),
    "small": dict(grid=(4, 4), tile=(1640, 1232), planes=9, blank=1, scaling=[(3, 3), (4, 4), (6, 6)],
                  scaling_tile=(410, 308), scaling_planes=3, edf_positions=2, repeat=1, memory=[(6, 3), (6, 8)]),
    "tiny": dict(grid=(2, 2), tile=(320, 240), planes=3, blank=0, scaling=[], scaling_tile=(160, 120),
                 scaling_planes=1, edf_positions=1, repeat=1, memory=[]),
}


def _pair(text: str) -> tuple[int, int]:
    a, b = text.lower().split("x")
    return int(a), int(b)


class Scrubber:
    """Replace this machine's absolute paths in text that goes into committed files."""

    def __init__(self, pairs: list[tuple[Path, str]]):
        items = []
        for path, label in pairs:
            for variant in {str(path), str(Path(path).resolve())}:
                items.append((variant, label))
        items.append((str(Path.home()), "~"))
        self.items = sorted(items, key=lambda kv: -len(kv[0]))

    def __call__(self, obj):
        if isinstance(obj, str):
            for old, new in self.items:
                obj = obj.replace(old, new)
            return obj
        if isinstance(obj, dict):
            return {k: self(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self(v) for v in obj]
        return obj


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark ofm-tiling against the floor and openflexure-stitching "
                                            "(see the module docstring).")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--grid", type=_pair, help="main scan positions COLSxROWS")
    p.add_argument("--tile", type=_pair, help="main scan tile size WxH")
    p.add_argument("--planes", type=int, help="images per stack")
    p.add_argument("--blank", type=int, help="blank-glass positions (0-3)")
    p.add_argument("--scaling", help="comma-separated grids for the scaling run, e.g. 4x4,8x8,16x16")
    p.add_argument("--scaling-tile", type=_pair, help="tile size WxH of the scaling run")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--no-ofs", action="store_true", help="do not run openflexure-stitching")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs on long scans")
    p.add_argument("--no-edf", action="store_true")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage processes")
    p.add_argument("--repeat", type=int, help="repeats of our stitch and of the floor (best reported)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ofs-timeout", type=float, default=3 * 3600)
    p.add_argument("--cache", type=Path, default=HERE / "cache")
    p.add_argument("--work", type=Path, default=HERE / "work")
    p.add_argument("--venv", type=Path, default=HERE / ".venv-ofs")
    p.add_argument("--results", type=Path)
    p.add_argument("--markdown", type=Path)
    p.add_argument("--plot", type=Path)
    p.add_argument("--render-only", action="store_true",
                   help="only rewrite the Markdown report and the plot from an existing results file")
    return p



def main(argv: list[str] | None = None) -> int:
    """The whole run: settings, scans, measurements, summary and targets, results.json and the report."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        from tasks import run_task

        run_task(argv[1], argv[2])
        return 0
    args = build_parser().parse_args(argv)
    pre = settings(args)
    full = args.preset == "full" and args.grid is None and args.tile is None
    work = args.work / args.preset
    results_path = args.results or (HERE / "results.json" if full else work / "results.json")
    md_path = args.markdown or (REPO / "BENCHMARKS.md" if full else work / "BENCHMARKS.md")
    plot_path = args.plot or (HERE / "scaling.png" if full else work / "scaling.png")
    scrub = Scrubber([(REPO, "."), (args.work, "<work>"), (args.cache, "<cache>"), (Path(sys.prefix), "<python>")])

    if args.render_only:
        render_only(results_path, md_path, plot_path)
        return 0

    results: dict = {"preset": args.preset, "workers": args.workers,
                     "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                     "command": "python benchmarks/run.py " + " ".join(scrub(a) for a in argv),
                     "machine": machine_info(), "load_start": loadavg()}
    ofs_exe = None
    if not args.no_ofs:
        ofs_exe = ensure_ofs_venv(args.venv)
        results["ofs_versions"] = ofs_versions(args.venv)
    results.update(run_benchmarks(args, pre, work, ofs_exe))
    results["graph_paper"] = graph_paper_results(args.workers) if full else None  # real tiles: full runs only
    results["summary"] = summarise(results["main"])
    results["targets"] = targets(results["main"], results["summary"], results["memory"])
    results["load_end"] = loadavg()
    results["kept_notes"] = kept_notes(md_path)

    results = scrub(results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    write_results(results_path, results)
    render(results, md_path, plot_path)
    log(f"wrote {scrub(str(results_path))}, {scrub(str(md_path))}"
        + (f", {scrub(str(plot_path))}" if results["scaling"] else ""))
    for t in results["targets"]:
        log(f"target: {t['target']}: {t['measured']} -> {t['met']}")
    return 0


def settings(args: argparse.Namespace) -> dict:
    """The preset with the command line's overrides."""
    pre = dict(PRESETS[args.preset])
    for key in ("grid", "tile", "planes", "blank", "repeat", "scaling_tile"):
        if getattr(args, key) is not None:
            pre[key] = getattr(args, key)
    if args.scaling:
        pre["scaling"] = [_pair(t) for t in args.scaling.split(",") if t.strip()]
    if args.no_scaling:
        pre["scaling"] = []
    if args.no_memory or args.grid is not None or args.tile is not None:
        pre["memory"] = []
    return pre


def run_benchmarks(args: argparse.Namespace, pre: dict, work: Path, ofs_exe: Path | None) -> dict:
    """The measurements: the main scan, the scaling scans and the memory scans (generated first if needed)."""
    scan = ensure_scan(args.cache, pre["grid"], pre["tile"], pre["planes"], pre["blank"], args.workers)
    scaling_scans = [ensure_scan(args.cache, g, pre["scaling_tile"], pre["scaling_planes"], 0, args.workers)
                     for g in pre["scaling"]]
    out: dict = {}
    out["main"] = bench_scan(scan, work / "main", workers=args.workers, repeat=pre["repeat"],
                             stages=not args.no_stages, floor=True, ofs_exe=ofs_exe, ofs_timeout=args.ofs_timeout,
                             edf_positions=0 if args.no_edf else pre["edf_positions"])
    out["scaling"] = [scaling_row(g, bench_scan(sscan, work / f"scaling-{fmt_pair(g)}", workers=args.workers,
                                                  repeat=1, stages=False, floor=False, ofs_exe=ofs_exe,
                                                  ofs_timeout=args.ofs_timeout, edf_positions=0))
                      for g, sscan in zip(pre["scaling"], scaling_scans)]
    mem = []
    for g in pre["memory"]:  # the main scan's tile size, central planes only, no blank tiles
        mscan = ensure_scan(args.cache, g, pre["tile"], 1, 0, args.workers)
        r = bench_scan(mscan, work / f"memory-{fmt_pair(g)}", workers=args.workers, repeat=1, stages=False,
                       floor=False, ofs_exe=None, ofs_timeout=args.ofs_timeout, edf_positions=0)
        mem.append(memory_row(g, r))
    out["memory"] = mem
    out["scaling_tile"] = list(pre["scaling_tile"])
    out["scaling_planes"] = pre["scaling_planes"]
    return out


def graph_paper_results(workers: int) -> dict | None:
    """Overlap agreement on the real graph-paper tiles (`graph_paper.py`): nominal, Fiji, ofm-tiling.

    Not a timing: measured in this process. None when the shared data are not beside the repository.
    """
    import graph_paper

    if not graph_paper.DATA.is_dir():
        return None
    log("graph paper: overlap agreement of nominal, Fiji and ofm-tiling positions")
    table, _ = graph_paper.rows(graph_paper.DATA, workers=workers)
    names = graph_paper.tile_folder_collection(graph_paper.DATA).names
    return {"table": graph_paper.markdown(table, names), "summary": graph_paper.summary(table)}


def render_only(results_path: Path, md_path: Path, plot_path: Path) -> None:
    """Recompute the summary and targets of an existing results file and rewrite the report and plot."""
    results = json.loads(results_path.read_text())
    results["summary"] = summarise(results["main"])
    results["targets"] = targets(results["main"], results["summary"], results.get("memory"))
    results["kept_notes"] = kept_notes(md_path)
    write_results(results_path, results)
    render(results, md_path, plot_path)


def write_results(path: Path, results: dict) -> None:
    """results.json: everything but the kept notes (those live in BENCHMARKS.md)."""
    path.write_text(json.dumps({k: v for k, v in results.items() if k != "kept_notes"}, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
