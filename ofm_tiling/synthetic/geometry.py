"""Where the stage goes and where each tile really is: the commanded grid, the stage error, the canvas size.

The camera-stage matrix ``M`` (see `ofm_metadata.camera_stage_matrix`) maps an image displacement
(row, col) at the calibration width to stage steps; a saved image ``width`` pixels wide uses
``M_image = M * calibration_width / width``. The stage is commanded on an axis-aligned grid of
whole steps, so the nominal tile grid is rotated by the camera's small rotation in the mosaic.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from .ofm_metadata import CALIBRATION_HW, camera_stage_matrix
from .spec import ScanSpec


@dataclass
class Geometry:
    """Stage and canvas positions of every position, in scan order."""

    order: list[tuple[int, int]]  # (column, row) in scan order
    csm: np.ndarray
    calibration_hw: tuple[int, int]
    stage_xy: np.ndarray  # (N, 2) int steps, scan order
    stride: dict[str, int]
    nominal: np.ndarray  # (N, 2) canvas x, y where the stage puts each tile
    true_xy: np.ndarray  # (N, 2) canvas x, y where each tile really is
    stage_zero_xy: tuple[float, float]
    canvas_hw: tuple[int, int]


def scan_order(cols: int, rows: int, style: str) -> list[tuple[int, int]]:
    """(column, row) of every position in capture order."""
    order: list[tuple[int, int]] = []
    for r in range(rows):
        cs = range(cols) if style == "raster" or r % 2 == 0 else range(cols - 1, -1, -1)
        order.extend((c, r) for c in cs)
    return order


def plan_geometry(spec: ScanSpec, margin: int, rng: np.random.Generator, rnd: random.Random) -> Geometry:
    """Stage grid, camera-stage matrix, nominal and true tile positions and the canvas size."""
    h, w = spec.tile_shape
    calibration_hw = CALIBRATION_HW[spec.layout]
    csm = camera_stage_matrix(calibration_hw[1], spec.csm_rotation_deg)
    m_image = csm * (calibration_hw[1] / w)
    # Each grid step moves one axis, by the dominant component of the ideal image-space step.
    steps = []
    for d_rowcol in (np.array([0.0, (1 - spec.overlap) * w]), np.array([(1 - spec.overlap) * h, 0.0])):
        v = d_rowcol @ m_image
        steps.append(np.where(np.abs(v) == np.abs(v).max(), np.round(v), 0.0))
    col_step, row_step = steps
    origin = np.array([rnd.randrange(-3000, 6000), rnd.randrange(-6000, 3000)])
    order = scan_order(spec.cols, spec.rows, spec.style)
    stage_xy = np.array([origin + c * col_step + r * row_step for c, r in order]).astype(np.int64)
    nominal = (stage_xy @ np.linalg.inv(m_image))[:, ::-1]  # (row, col) -> (x, y)
    err = _stage_error(spec.stage_error_px, spec.error_dist, nominal.shape, rng)
    pad = math.ceil(spec.stage_error_px) + margin + 2  # every rendered pixel stays inside the canvas
    shift = pad - np.floor(nominal.min(axis=0))
    nominal = nominal + shift
    true_xy = nominal + err
    if not spec.subpixel:
        true_xy = np.round(true_xy)
    canvas_hw = (int(math.ceil(nominal[:, 1].max() + h + pad)), int(math.ceil(nominal[:, 0].max() + w + pad)))
    return Geometry(order=order, csm=csm, calibration_hw=calibration_hw, stage_xy=stage_xy,
                    stride={"x": int(np.abs(col_step).max()), "y": int(np.abs(row_step).max())},
                    nominal=nominal, true_xy=true_xy, stage_zero_xy=(float(shift[0]), float(shift[1])),
                    canvas_hw=canvas_hw)


def _stage_error(bound: float, dist: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Per-axis stage error, uniform in +-bound or normal (sigma bound / 2) clipped to it."""
    if dist == "uniform":
        return rng.uniform(-bound, bound, size=shape)
    return np.clip(rng.normal(0, bound / 2, size=shape), -bound, bound)
