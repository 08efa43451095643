"""The ``ofm-tiling`` command: one line per problem, never a traceback for a user mistake."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import OfmTilingError

log = logging.getLogger("ofm_tiling")


def _grid(text: str) -> tuple[int, int]:
    try:
        cols, rows = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected COLSxROWS such as 10x8, not {text!r}") from None
    if cols < 1 or rows < 1:
        raise argparse.ArgumentTypeError("grid size must be at least 1x1")
    return cols, rows


def _size(text: str) -> tuple[int, int]:
    return _grid(text)


def _add_collect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("scan", type=Path, help="smart-stack scan folder (holds data.json and one folder per position)")
    p.add_argument("--select", choices=("tag", "sharpest"), default="tag",
                   help="image per position: the one tagged central_image (default; sharpest when tags are "
                        "missing or contradictory) or always the sharpest by focus measure")
    p.add_argument("--use", type=Path, default=None, metavar="DIR",
                   help="folder for the collected tiles (default SCAN/use)")
    p.add_argument("--link", action="store_true",
                   help="hard-link tiles instead of copying (a program saving over a tile in place would "
                        "then change the original image)")
    p.add_argument("--strict", action="store_true", help="fail on an incomplete scan or a damaged image")
    p.add_argument("--grid", type=_grid, metavar="COLSxROWS",
                   help="lay tiles out on this grid (row by row) instead of by stage position")
    p.add_argument("--overlap", type=float, metavar="F", help="overlap fraction for --grid, e.g. 0.3")
    p.add_argument("--focus", choices=("central", "edf"), default="central",
                   help="use the chosen plane (default) or an all-in-focus image fused from each 9-plane stack")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ofm-tiling",
        description="Collect and stitch OpenFlexure Microscope smart-stack scans.")
    parser.add_argument("--version", action="version", version=f"ofm-tiling {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="copy the image to use of every position into SCAN/use, Fiji-ready")
    _add_collect_options(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="same as --use")

    p = sub.add_parser("stitch", help="collect, then stitch into one pyramidal OME-TIFF mosaic")
    _add_collect_options(p)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default SCAN/stitched)")
    p.add_argument("--backend", choices=("builtin", "fiji"), default="builtin",
                   help="built-in registration and fusion (default), or Fiji's Grid/Collection stitching")
    p.add_argument("--fiji", type=Path, default=None, metavar="PATH",
                   help="Fiji.app folder for --backend fiji (default $FIJI_HOME or the usual places)")
    p.add_argument("--fiji-layout", choices=("positions", "grid"), default="positions",
                   help="Fiji: positions from TileConfiguration.txt (default) or a regular grid with the {ii} pattern")
    p.add_argument("--compression", choices=("jpeg", "deflate", "none"), default="jpeg",
                   help="OME-TIFF tile compression (default jpeg)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the OME-TIFF tiles (default 90)")
    p.add_argument("--workers", type=int, default=None, help="threads to use (default: all cores)")
    p.add_argument("--no-focus-check", dest="check_focus", action="store_false",
                   help="skip the focus curve of every stack in the report (saves decoding every plane at 1/8 size)")

    p.add_argument("--keep-fiji-mosaic", action="store_true",
                   help="Fiji: write Fiji's own fused image instead of fusing the checked positions "
                        "(refused when a tile Fiji placed needed correcting)")

    p = sub.add_parser("fiji-macro", help="print the ImageJ macro the Fiji backend runs for a scan (registration "
                                          "only), or what the collect-and-stitch macro asks for")
    p.add_argument("scan", type=Path, help="the scan folder")
    p.add_argument("--use", type=Path, default=None, metavar="DIR", help="its collected tiles (default SCAN/use)")
    p.add_argument("--fiji-layout", choices=("positions", "grid"), default="positions",
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

    p = sub.add_parser("example", help="write a small generated example scan (with its ground truth)")
    p.add_argument("folder", type=Path, help="where to write the example scan")
    p.add_argument("--grid", type=_grid, default=(4, 3), metavar="COLSxROWS")
    p.add_argument("--tile", type=_size, default=(640, 480), metavar="WxH", help="tile size in pixels")
    p.add_argument("--incomplete", action="store_true", help="make the last position a failed one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true")
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


def _run_collect(args: argparse.Namespace) -> int:
    from .collect import FAILURE_REPORT, collect

    out = args.out or args.use
    result = collect(args.scan, out=out, select=args.select, link=args.link, strict=args.strict,
                     grid=args.grid, overlap=args.overlap, focus=args.focus)
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

    r = stitch(args.scan, out=args.out, use=args.use, backend=args.backend, select=args.select, focus=args.focus,
               link=args.link, strict=args.strict, grid=args.grid, overlap=args.overlap, fiji=args.fiji,
               fiji_layout=args.fiji_layout, compression=args.compression, quality=args.quality,
               workers=args.workers, check_focus=args.check_focus, show_progress=not args.quiet)
    if not args.quiet:
        c = r.collection
        print(f"Collected {len(c.tiles)} tiles into {c.use_dir} (ordered by {c.order})")
        print(f"Stitched a {r.shape[1]}x{r.shape[0]} px mosaic with the {r.backend} backend "
              f"in {sum(r.timings.values()):.1f} s:")
        for path in (r.mosaic, r.preview, r.report, r.layout_png, r.registered):
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
    from .synthetic import make_scan

    truth = make_scan(args.folder, grid=args.grid, tile_size=args.tile, incomplete=args.incomplete, seed=args.seed)
    if not args.quiet:
        print(f"Wrote an example scan of {args.grid[0]}x{args.grid[1]} positions to {args.folder} "
              f"(ground truth in {Path(args.folder) / 'truth.json'})")
    del truth
    return 0


COMMANDS = {"collect": _run_collect, "stitch": _run_stitch, "fiji-macro": _run_fiji_macro,
            "install-fiji-macro": _run_install_fiji_macro, "example": _run_example}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ofm-tiling`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    saved = _setup_logging(getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
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
