"""The scaling plot: time and peak memory of both tools against the number of tiles.

Pillow only, so the benchmark needs nothing beyond the project's dependencies.
"""
from __future__ import annotations

from pathlib import Path


def _nice_ticks(vmax: float, n: int = 5) -> list[float]:
    import math

    if vmax <= 0:
        return [0, 1]
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(vmax / step)) + 1)]


def draw_scaling(path: Path, rows: list[dict], title: str) -> None:
    """Two panels side by side (wall time, peak RSS), one line per series, saved as a PNG at `path`."""
    from PIL import Image, ImageDraw, ImageFont

    W, H = 1400, 560
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=16)
        small = ImageFont.load_default(size=13)
    except TypeError:
        font = small = ImageFont.load_default()
    d.text((20, 10), title, fill="black", font=font)
    series_t = [("ofm-tiling stitch (total)", "#1f77b4", lambda r: r.get("ours_wall_s")),
                ("  registration", "#2ca02c", lambda r: r.get("ours_registration_s")),
                ("  fusion + OME-TIFF", "#9467bd", lambda r: r.get("ours_fusion_s")),
                ("openflexure-stitching 0.3.1", "#d62728", lambda r: r.get("ofs_wall_s"))]
    series_m = [("ofm-tiling stitch", "#1f77b4", lambda r: r.get("ours_rss_mb")),
                ("openflexure-stitching 0.3.1", "#d62728", lambda r: r.get("ofs_rss_mb"))]
    for k, (series, ylabel) in enumerate([(series_t, "wall time (s)"), (series_m, "peak RSS (MB)")]):
        box = (90 + k * 690, 60, 90 + k * 690 + 560, H - 70)
        _panel(d, box, rows, series, ylabel, font=font, small=small)
    img.save(path)


def _panel(d, box: tuple[int, int, int, int], rows: list[dict], series: list, ylabel: str, *, font, small) -> None:
    """One panel in `box` (x0, y0, x1, y1): axes with ticks, then each series' line, points and legend entry."""
    x0, y0, x1, y1 = box
    xs = [r["tiles"] for r in rows]
    vals = [f(r) for _, _, f in series for r in rows if f(r) is not None]
    yt = _nice_ticks(max(vals) if vals else 1)
    xt = _nice_ticks(max(xs) if xs else 1)
    ymax, xmax = yt[-1], xt[-1]

    def px(x, y):
        return x0 + (x1 - x0) * x / xmax, y1 - (y1 - y0) * y / ymax

    for t in yt:
        _, yy = px(0, t)
        d.line([(x0, yy), (x1, yy)], fill="#e6e6e6")
        d.text((x0 - 8, yy), f"{t:g}", fill="black", font=small, anchor="rm")
    for t in xt:
        xx, _ = px(t, 0)
        d.line([(xx, y1), (xx, y1 + 5)], fill="black")
        d.text((xx, y1 + 8), f"{t:g}", fill="black", font=small, anchor="mt")
    d.rectangle([x0, y0, x1, y1], outline="black")
    d.text(((x0 + x1) / 2, y1 + 30), "tiles (positions)", fill="black", font=font, anchor="mt")
    d.text((x0 - 60, y0 - 25), ylabel, fill="black", font=font)
    for i, (label, colour, f) in enumerate(series):
        pts = [px(r["tiles"], f(r)) for r in rows if f(r) is not None]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=3)
        for x, y in pts:
            d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour)
        ly = y0 + 12 + 22 * i
        d.line([(x0 + 15, ly), (x0 + 45, ly)], fill=colour, width=3)
        d.text((x0 + 52, ly), label, fill="black", font=small, anchor="lm")
