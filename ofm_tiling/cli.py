"""The ``ofm-tiling`` command: one line per problem, never a traceback for a user mistake."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import OfmTilingError, OptionError
from .options import CHOICES, DEFAULT_QUALITY, CollectOptions, StitchOptions

log = logging.getLogger("ofm_tiling")


def _grid(text: str) -> tuple[int, int]:
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected COLSxROWS such as 10x8, not {text!r}") from None
    if cols < 1 or rows < 1:
        raise argparse.ArgumentTypeError("grid size must be at least 1x1")
    return cols, rows


def _add_selection_options(p: argparse.ArgumentParser) -> None:
    """Which image of each position, and how hard to be on damaged input (collect, stitch, batch)."""
    p.add_argument("--select", choices=CHOICES["select"], default="tag",
                   help="image per position: the one tagged central_image (default; sharpest when tags are "
                        "missing or contradictory) or always the sharpest by focus measure")
    p.add_argument("--focus", choices=CHOICES["focus"], default="central",
                   help="use the chosen plane (default) or an all-in-focus image fused from each 9-plane stack")
    p.add_argument("--strict", action="store_true", help="fail on an incomplete scan or a damaged image")
    p.add_argument("--workers", type=int, default=None, help="threads to use (default: all cores)")


def _add_collect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("scan", type=Path, help="scan folder: a smart-stack scan, a flat OFM scan (JPEGs with OFM metadata) "
                                           "or tiles with a TileConfiguration.txt")
    _add_selection_options(p)
    p.add_argument("--use", type=Path, default=None, metavar="DIR",
                   help="folder for the collected tiles (default SCAN/use)")
    p.add_argument("--link", action="store_true",
                   help="hard-link tiles instead of copying (a program saving over a tile in place would "
                        "then change the original image)")
    p.add_argument("--grid", type=_grid, metavar="COLSxROWS",
                   help="lay tiles out on this grid (row by row) instead of by stage position")
    p.add_argument("--overlap", type=float, metavar="F", help="overlap fraction for --grid, e.g. 0.3")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def _add_layout_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", type=Path, default=None, metavar="FILE",
                   help="a Fiji TileConfiguration.txt kept elsewhere; its tile names are relative to SCAN")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    """The backend and what the mosaic is written as (stitch, batch)."""
    p.add_argument("--backend", choices=CHOICES["backend"], default="builtin",
                   help="built-in registration and fusion (default), or Fiji's Grid/Collection stitching")
    p.add_argument("--fiji", type=Path, default=None, metavar="PATH",
                   help="Fiji.app folder for --backend fiji (default $FIJI_HOME or the usual places)")
    p.add_argument("--compression", choices=CHOICES["compression"], default="jpeg",
                   help="OME-TIFF tile compression (default jpeg)")
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY,
                   help=f"JPEG quality of the OME-TIFF tiles, 1-100 (default {DEFAULT_QUALITY})")
    p.add_argument("--no-focus-check", dest="check_focus", action="store_false",
                   help="skip the focus verdict of every stack in the report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ofm-tiling",
        description="Collect and stitch OpenFlexure Microscope smart-stack scans.")
    parser.add_argument("--version", action="version", version=f"ofm-tiling {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="copy the image to use of every position into SCAN/use, Fiji-ready")
    _add_collect_options(p)
    _add_layout_option(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="same as --use")

    p = sub.add_parser("stitch", help="collect, then stitch into one pyramidal OME-TIFF mosaic")
    _add_collect_options(p)
    _add_layout_option(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default SCAN/stitched)")
    _add_output_options(p)
    p.add_argument("--fiji-layout", choices=CHOICES["fiji_layout"], default="positions",
                   help="Fiji: positions from TileConfiguration.txt (default) or a regular grid with the {ii} pattern")
    p.add_argument("--keep-fiji-mosaic", action="store_true",
                   help="Fiji: write Fiji's own fused image instead of fusing the checked positions "
                        "(refused when a tile Fiji placed needed correcting)")
    p.add_argument("--viewer", action="store_true",
                   help="also write OUT/viewer: a web page showing the mosaic at full resolution (opens offline)")
    p.add_argument("--wait", action="store_true",
                   help="if another run is working on this scan, wait for it instead of stopping")

    p = sub.add_parser("fiji-macro", help="print the ImageJ macro the Fiji backend runs for a scan (registration "
                                          "only), or what the collect-and-stitch macro asks for")
    p.add_argument("scan", type=Path, help="the scan folder")
    p.add_argument("--use", type=Path, default=None, metavar="DIR", help="its collected tiles (default SCAN/use)")
    p.add_argument("--fiji-layout", choices=CHOICES["fiji_layout"], default="positions",
                   help="Fiji's layout, as for stitch --backend fiji (grid: read from the collected tiles)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--options", dest="output", action="store_const", const="options",
                      help="print only the Grid/Collection option string")
    what.add_argument("--fuse-options", dest="output", action="store_const", const="fuse-options",
                      help="print the option string that fuses the checked positions (TileConfiguration.checked.txt)")
    what.add_argument("--check", type=Path, default=None, metavar="LOG",
                      help="check the registration Fiji wrote into the tile folder (LOG: Fiji's log of that run, "
                           "or '-' for none), write TileConfiguration.checked.txt and make the output folder")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="with --check: the macro's output folder to make (default SCAN/stitched-fiji)")
    p.add_argument("--errors-to-stdout", action="store_true",
                   help="print errors on stdout (Fiji's exec() shows only stdout)")

    p = sub.add_parser("install-fiji-macro", help="install the collect-and-stitch script into Fiji's Plugins menu")
    p.add_argument("--fiji", type=Path, default=None, metavar="PATH", help="Fiji.app folder")
    p.add_argument("-q", "--quiet", action="store_true")

    from .synthetic.command import add_arguments as add_example_arguments

    p = sub.add_parser("example", help="write a generated example scan of any kind (with its ground truth)")
    add_example_arguments(p)
    _add_viewer_parsers(sub)
    _add_batch_parser(sub)
    _add_watch_parser(sub)
    return parser


def _setup_logging(quiet: bool) -> tuple:
    """Print the package's notes as ``ofm-tiling: …`` lines; returns the state to restore."""
    saved = (log.handlers[:], log.level, log.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ofm-tiling: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.ERROR if quiet else logging.INFO)
    log.propagate = False
    return saved


def _collect_options(args: argparse.Namespace) -> CollectOptions:
    return CollectOptions(select=args.select, focus=args.focus, link=args.link, strict=args.strict, grid=args.grid,
                          overlap=args.overlap, workers=args.workers, layout=getattr(args, "layout", None))


def _run_collect(args: argparse.Namespace) -> int:
    from .collect import FAILURE_REPORT, collect

    options = _collect_options(args)
    options.check()
    out = args.out or args.use
    result = collect(args.scan, out=out, select=options.select, link=options.link, strict=options.strict,
                     grid=options.grid, overlap=options.overlap, focus=options.focus, workers=options.workers,
                     layout=options.layout)
    if not args.quiet:
        print(f"Collected {len(result.tiles)} tiles ({result.tile_shape[1]}x{result.tile_shape[0]}) "
              f"into {result.use_dir}")
        print(f"  ordered by {result.order}; laid out from {result.layout}")
        if result.failed:
            print(f"  scan incomplete: {len(result.failed)} position(s) without images; "
                  f"see {result.use_dir / FAILURE_REPORT}")
    return 0


def _run_stitch(args: argparse.Namespace) -> int:
    from .stitch import stitch

    options = StitchOptions(**vars(_collect_options(args)), backend=args.backend, fiji=args.fiji,
                            fiji_layout=args.fiji_layout, keep_fiji_mosaic=args.keep_fiji_mosaic,
                            compression=args.compression, quality=args.quality, check_focus=args.check_focus,
                            viewer=args.viewer, wait=args.wait)
    r = stitch(args.scan, out=args.out, use=args.use, options=options, show_progress=not args.quiet)
    if not args.quiet:
        c = r.collection
        print(f"Collected {len(c.tiles)} tiles into {c.use_dir} (ordered by {c.order})")
        print(f"Stitched a {r.shape[1]}x{r.shape[0]} px mosaic with the {r.backend} backend "
              f"in {sum(r.timings.values()):.1f} s:")
        for path in (r.mosaic, r.preview, r.report, r.layout_png, r.registered) + ((r.viewer,) if args.viewer else ()):
            print(f"  {path}")
    return 0


def _run_fiji_macro(args: argparse.Namespace) -> int:
    from .fiji import fiji_macro

    if args.out is not None and args.check is None:
        raise OfmTilingError(args.out, "--out is for --check only")
    output = "check" if args.check is not None else args.output or "macro"
    log_file = None if args.check is None or str(args.check) == "-" else args.check
    try:
        print(fiji_macro(args.scan, use=args.use, layout=args.fiji_layout, output=output, log=log_file,
                         out=args.out))
    except OfmTilingError as exc:
        if not args.errors_to_stdout:
            raise
        print(f"ofm-tiling: error: {exc}")
        return 2
    return 0


def _run_install_fiji_macro(args: argparse.Namespace) -> int:
    from .fiji import install_macro

    path = install_macro(args.fiji)
    if not args.quiet:
        print(f"Installed {path}; restart Fiji and find it under Plugins > OpenFlexure")
    return 0


def _run_example(args: argparse.Namespace) -> int:
    from .synthetic.command import run

    return run(args)


def _add_viewer_parsers(sub) -> None:
    p = sub.add_parser("viewer", help="write OUTPUT_DIR/viewer: a web page for the mosaic (opens offline, shareable)")
    p.add_argument("output", type=Path, metavar="OUTPUT_DIR", help="a finished output folder (holds mosaic.ome.tif)")
    p.add_argument("--quality", type=int, default=None, help="JPEG quality of the viewer's tiles, 1-100 (default 90)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p = sub.add_parser("view", help="show a stitched scan in the web browser (served on 127.0.0.1 until Ctrl-C)")
    p.add_argument("path", type=Path, metavar="SCAN_OR_OUTPUT_DIR",
                   help="a stitched scan folder (uses SCAN/stitched) or an output folder")
    p.add_argument("--port", type=int, default=0, help="port to serve on (default: a free one)")
    p.add_argument("--no-browser", dest="browser", action="store_false", help="only print the address")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the address and errors")


def _write_viewer_locked(out: Path, quality: int | None, quiet: bool):
    from .files import ScanLock
    from .progress import progress_bar
    from .viewer import write_viewer
    from .viewer.tiles import QUALITY

    with ScanLock(out), progress_bar("viewer tiles", enabled=not quiet) as bar:
        return write_viewer(out, quality=QUALITY if quality is None else quality, progress=bar)


def _run_viewer(args: argparse.Namespace) -> int:
    from .viewer import find_result

    out = find_result(args.output)
    if out != args.output:
        raise OfmTilingError(args.output, "is not an output folder (holds no mosaic.ome.tif); "
                                          f"did you mean {out}?")
    result = _write_viewer_locked(out, args.quality, args.quiet)
    if not args.quiet:
        print(f"Wrote {result.tiles} tiles in {len(result.pyramid.levels)} levels and {result.index}")
        print(f"  open it in a browser, or share the folder {result.folder} (zipped); it works offline")
    return 0


def _run_view(args: argparse.Namespace) -> int:
    from .viewer import VIEWER, find_result, is_current, serve

    out = find_result(args.path)
    if not is_current(out):
        _write_viewer_locked(out, None, args.quiet)
    serve(out / VIEWER, port=args.port, open_browser=args.browser)
    return 0


def _add_batch_parser(sub) -> None:
    def _positive(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError("must be at least 1")
        return value

    p = sub.add_parser("batch", help="stitch many scans: here as many at once as memory and cores allow, "
                                     "or on a Dask cluster; exit code 1 when some scan failed")
    p.add_argument("scans", type=Path, nargs="+", metavar="SCAN", help="smart-stack scan folders")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="Dask scheduler such as tcp://HOST:8786: one task per scan on its workers, which must "
                        "reach the scans under the same paths (default: stitch here)")
    p.add_argument("--jobs", type=_positive, default=None, metavar="N",
                   help="here: at most N scans at once (default: as many as memory and cores allow)")
    p.add_argument("--out-name", default="stitched", metavar="NAME",
                   help="output folder inside every scan (default: stitched)")
    _add_selection_options(p)
    _add_output_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary and errors")


def _run_batch(args: argparse.Namespace) -> int:
    import time

    from .batch import check_batch, format_progress, format_summary, plan_local, run_dask, run_local

    options = dict(backend=args.backend, fiji=args.fiji, select=args.select, focus=args.focus, strict=args.strict,
                   compression=args.compression, quality=args.quality, workers=args.workers,
                   check_focus=args.check_focus)
    try:
        scans = check_batch(args.scans, options, args.out_name)
    except OfmTilingError as exc:  # name the flag, not the library's parameter
        if exc.problem.startswith("out_name "):
            raise OfmTilingError(exc.path, "--out-name " + exc.problem.removeprefix("out_name ")) from None
        raise

    def done(outcome, finished, total):
        if not args.quiet or not outcome.ok:
            print(format_progress(outcome, finished, total), file=sys.stderr, flush=True)

    if args.scheduler and args.jobs:
        raise OfmTilingError(None, "--jobs is for stitching here; with --scheduler the cluster's worker threads "
                                   "decide how many scans run at once")
    t0 = time.perf_counter()
    if args.scheduler:
        outcomes = run_dask(scans, options, args.scheduler, out_name=args.out_name, on_done=done)
    else:
        plan = plan_local(scans, options, jobs=args.jobs)
        if not args.quiet:
            print(f"Stitching {len(scans)} scans, {plan.jobs} at a time with {args.workers or plan.threads} "
                  f"thread(s) each (limited by {plan.limited_by}; largest estimate "
                  f"{plan.largest_bytes / 1e9:.1f} GB of {plan.budget_bytes / 1e9:.1f} GB)", file=sys.stderr)
        if plan.over_budget:
            log.warning("a scan may need more memory than is available (estimated %.1f GB, %.1f GB available)",
                        plan.largest_bytes / 1e9, plan.budget_bytes / 1e9)
        outcomes = run_local(scans, options, plan, out_name=args.out_name, on_done=done, quiet=args.quiet)
    print(format_summary(outcomes, wall=time.perf_counter() - t0))
    return 0 if all(o.ok for o in outcomes) else 1


def _add_watch_parser(sub) -> None:
    p = sub.add_parser("watch", help="follow a scan in progress: refresh OUT/preview.jpg and OUT/layout.png as "
                                     "positions complete, then stitch when the scan ends (or on Ctrl-C)")
    _add_collect_options(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (default SCAN/stitched)")
    p.add_argument("--poll", type=float, default=2.0, metavar="S", help="seconds between looks (default 2)")
    p.add_argument("--no-focus-check", dest="check_focus", action="store_false", help="as for stitch")
    p.add_argument("--viewer", action="store_true", help="also write OUT/viewer at the end")


def _run_watch(args: argparse.Namespace) -> int:
    from .watch import watch

    options = StitchOptions(**vars(_collect_options(args)), check_focus=args.check_focus, viewer=args.viewer, wait=True)
    r = watch(args.scan, out=args.out, use=args.use, options=options, poll=args.poll, show_progress=not args.quiet)
    if not args.quiet:
        print(f"Stitched {len(r.collection.tiles)} tiles into a {r.shape[1]}x{r.shape[0]} px mosaic: {r.out_dir}")
    return 0


COMMANDS = {"collect": _run_collect, "stitch": _run_stitch, "fiji-macro": _run_fiji_macro,
            "install-fiji-macro": _run_install_fiji_macro, "example": _run_example, "viewer": _run_viewer,
            "view": _run_view, "batch": _run_batch, "watch": _run_watch}


#: Library parameters whose command-line flag is not simply ``--`` + the name with dashes.
_FLAGS = {"check_focus": "--no-focus-check", "out": "--out", "use": "--use"}


def _flag(parameter: str) -> str:
    """The command-line flag that sets a library parameter."""
    return _FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ofm-tiling`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    saved = _setup_logging(getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
    except OptionError as exc:
        print(f"ofm-tiling: error: {_flag(exc.parameter)}: {exc.problem}", file=sys.stderr)
        return 2
    except OfmTilingError as exc:
        print(f"ofm-tiling: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ofm-tiling: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("ofm-tiling: error: out of memory", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions… on a path the code did not anticipate
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"ofm-tiling: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    finally:
        log.handlers[:], log.level, log.propagate = saved


if __name__ == "__main__":
    sys.exit(main())
