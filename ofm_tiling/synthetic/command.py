"""The options of ``ofm-tiling example``: command-line flags to a `ScanSpec`, spec errors back to flags."""
from __future__ import annotations

import argparse
import re
import time
from typing import Any

from ..errors import OfmTilingError
from .spec import KINDS, LAYOUTS, MISTAGS, PIXEL_TYPES, TILE_FORMATS, ScanSpec

# ScanSpec field -> the flag that sets it (errors name the flag the user typed).
FLAGS = {"kind": "--kind", "grid": "--grid", "tile_shape": "--tile", "overlap": "--overlap", "planes": "--planes",
         "layout": "--layout", "pixel_type": "--pixel-type", "tile_format": "--format", "source": "--source",
         "stage_error_px": "--stage-error", "error_dist": "--error-dist", "blank_tiles": "--blank",
         "incomplete": "--incomplete", "style": "--style", "jpeg_quality": "--quality", "tilt": "--tilt",
         "focus_jitter": "--focus-jitter", "mistag": "--mistag", "pixel_size_um": "--pixel-size",
         "noise_sigma": "--noise", "vignetting": "--vignetting", "seed": "--seed", "workers": "--workers"}


def _pair(text: str, flag: str, example: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise OfmTilingError(None, f"{flag} expects two whole numbers such as {example}; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _index_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OfmTilingError(None, f"--blank expects scan-order indices such as 2,5; got {text!r}") from None


def _mistag_map(text: str) -> dict[int, str]:
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, _, kind = item.partition("=")
        if kind not in MISTAGS or not key.strip().isdigit():
            raise OfmTilingError(None, f"--mistag expects INDEX=KIND with KIND one of {', '.join(MISTAGS)}; "
                                       f"got {item!r}")
        out[int(key)] = kind
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``ofm-tiling example`` (defaults: a 4x3 smart-stack scan of 640x480 tiles)."""
    p.add_argument("folder", metavar="FOLDER", help="folder to create (must not exist or be empty)")
    p.add_argument("--kind", choices=KINDS, default="smart-stack",
                   help="smart-stack (OFM server folders), flat (one folder of JPEGs with OFM metadata) or "
                        "tileconfig (tiles and a Fiji TileConfiguration.txt); default smart-stack")
    p.add_argument("--grid", default="4x3", metavar="COLSxROWS", help="positions (default 4x3)")
    p.add_argument("--tile", default="640x480", metavar="WxH",
                   help="tile width x height in pixels, at least 16x16 (default 640x480)")
    p.add_argument("--overlap", type=float, default=0.3, metavar="F",
                   help="overlap fraction of neighbours (default 0.3)")
    p.add_argument("--planes", type=int, default=None, metavar="N",
                   help="images per position (default 9 for smart-stack, else 1; tileconfig: 1)")
    p.add_argument("--layout", choices=LAYOUTS, default="v2", help="OFM metadata layout (default v2)")
    p.add_argument("--prefix", action="store_true", help="UserComment with the ASCII character-code prefix")
    p.add_argument("--pixel-type", choices=PIXEL_TYPES, default="rgb8", help="default rgb8")
    p.add_argument("--format", choices=TILE_FORMATS, default="jpeg",
                   help="tile file format (default jpeg; grey16 needs png or tiff)")
    p.add_argument("--source", choices=("real", "procedural"), default="real",
                   help="real H&E sample (default; procedural when not installed) or procedural texture")
    p.add_argument("--stage-error", type=float, default=20.0, metavar="PX",
                   help="stage error bound in pixels (default 20)")
    p.add_argument("--error-dist", choices=("uniform", "normal"), default="uniform")
    p.add_argument("--blank", default="", metavar="I,J", help="scan-order indices of blank tiles, e.g. 2,5")
    p.add_argument("--incomplete", action="store_true", help="the last position failed")
    p.add_argument("--keep-mtimes", action="store_true", help="file times = capture times (default: scrambled)")
    p.add_argument("--style", choices=("raster", "snake"), default="raster")
    p.add_argument("--quality", type=int, default=90, metavar="Q", help="JPEG quality (default 90)")
    p.add_argument("--no-subpixel", action="store_true", help="whole-pixel true positions")
    p.add_argument("--tilt", type=float, default=0.0, metavar="PLANES", help="focus change across a tile, in planes")
    p.add_argument("--focus-jitter", type=int, default=1, metavar="N",
                   help="in-focus plane varies by up to N planes from the middle (default 1)")
    p.add_argument("--mistag", default="", metavar="I=KIND,...", help="e.g. 1=none,4=several,6=bad_json")
    p.add_argument("--exif-datetime", choices=("auto", "yes", "no"), default="auto")
    p.add_argument("--pixel-size", type=float, default=None, metavar="UM", help="um per pixel to record")
    p.add_argument("--noise", type=float, default=2.0, metavar="SIGMA",
                   help="sensor noise sigma in 8-bit grey levels (default 2)")
    p.add_argument("--vignetting", type=float, default=0.0, metavar="F",
                   help="fractional brightness loss in the tile corners (default 0)")
    p.add_argument("--no-truth-png", action="store_true")
    p.add_argument("--seed", type=int, default=0, metavar="N")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="processes writing positions (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier generated scan in FOLDER")
    p.add_argument("-q", "--quiet", action="store_true")


def spec_from_args(args: argparse.Namespace) -> ScanSpec:
    """The ScanSpec the options ask for; a bad value raises OfmTilingError naming its flag."""
    width, height = _pair(args.tile, "--tile", "640x480 (width x height)")
    fields: dict[str, Any] = dict(
        kind=args.kind, grid=_pair(args.grid, "--grid", "4x3 (columns x rows)"), tile_shape=(height, width),
        overlap=args.overlap, planes=args.planes, layout=args.layout, usercomment_prefix=args.prefix,
        pixel_type=args.pixel_type, tile_format=args.format, source=args.source, stage_error_px=args.stage_error,
        error_dist=args.error_dist, blank_tiles=_index_list(args.blank), incomplete=args.incomplete,
        scramble_mtimes=not args.keep_mtimes, style=args.style, jpeg_quality=args.quality,
        subpixel=not args.no_subpixel, tilt=args.tilt, focus_jitter=args.focus_jitter,
        mistag=_mistag_map(args.mistag), exif_datetime={"auto": None, "yes": True, "no": False}[args.exif_datetime],
        pixel_size_um=args.pixel_size, noise_sigma=args.noise, vignetting=args.vignetting,
        truth_png=False if args.no_truth_png else None, seed=args.seed)
    try:
        return ScanSpec(**fields)
    except ValueError as exc:
        raise OfmTilingError(None, flag_message(str(exc), args)) from None


def flag_message(message: str, args: argparse.Namespace) -> str:
    """A ScanSpec error in the words of the command line (the field replaced by its flag)."""
    name = message.split(" ", 1)[0]
    if name == "tile_shape":
        return f"--tile must be at least 16x16 pixels (width x height); got {args.tile}"
    if name in FLAGS:
        return FLAGS[name] + message[len(name):]
    return message


def run(args: argparse.Namespace) -> int:
    """``ofm-tiling example``: write the scan, then one line saying what was written."""
    from ..progress import progress_bar
    from .scan import make_scan

    spec = spec_from_args(args)
    if args.workers < 1:
        raise OfmTilingError(None, f"--workers must be at least 1; got {args.workers}")
    t0 = time.perf_counter()
    with progress_bar("positions", enabled=not args.quiet) as bar:
        truth = make_scan(args.folder, spec, workers=args.workers, overwrite=args.overwrite, progress=bar)
    if not args.quiet:
        (cols, rows), (h, w) = truth.grid, truth.tile_shape
        print(f"Wrote a {truth.kind} scan of {len(truth.positions)} positions ({cols}x{rows} grid, "
              f"{truth.planes} image(s) of {w}x{h} px each, {truth.pixel_type} {truth.tile_format}, "
              f"{truth.source}) to {args.folder} in {time.perf_counter() - t0:.1f} s; ground truth in truth.json")
        for note in truth.notes:
            print(f"note: {note}")
    return 0
