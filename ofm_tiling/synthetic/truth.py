"""Ground truth of a synthetic scan: what `make_scan` returns and writes to ``truth.json``.

Geometry
--------
Tiles are cut from a continuous canvas (see `texture`): ``truth.png`` holds the canvas sampled at
integer positions (8-bit RGB whatever the tiles' pixel type), and the tile whose top-left corner is
at ``true_xy = (tx, ty)`` holds the canvas sampled at ``(tx + j, ty + i)`` for pixel (row i, column j).
Greyscale tiles hold the luma of that (``pixels.LUMA``), 16-bit ones x 257, plus sensor noise.

Camera-stage convention
-----------------------
The camera-stage matrix ``M`` (2x2, in the metadata) is calibrated on images ``calibration_width``
pixels wide (832 for v2, ``image_resolution[1]`` for v3) and maps an image displacement (row, col)
at that width to stage steps: ``stage_xy = [d_row, d_col] @ M``. For a saved image ``width`` wide::

    M_image = M * calibration_width / width
    (row, col) = stage_xy @ inv(M_image)

gives the tile's top-left corner up to one global offset, ``stage_zero_canvas_xy``. The stage
records the *commanded* position; the true position differs by the stage error (bounded by
``stage_error_px`` per axis, plus 0.5 px when ``subpixel=False``), which registration must recover.
For ``kind="tileconfig"``, ``TileConfiguration.txt`` holds the nominal corners minus
``config_origin_xy``.

Focus
-----
Plane ``k`` is taken at ``z = z_focus + (k - k_focus) * stack_dz`` and blurred by a Gaussian of sigma
``defocus_px * |k - k_focus|``; ``k_focus = planes // 2 + jitter`` is the sharpest and is tagged
``central_image``. With ``tilt``, ``k_focus(col) = k_focus + tilt * (col / (width - 1) - 0.5)``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OfmTilingError

TRUTH_SCHEMA = "ofm-tiling-synthetic-truth/2"
_OLD_SCHEMA = "ofm-tiling-synthetic-truth/1"  # tile_size (w, h), smart stacks only


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
        Position folder name, ``{x}_{y}`` in stage steps; ``""`` (the scan folder) for flat and
        tileconfig scans.
    files : list of str
        Image names in capture order (plane k is ``files[k]``, z increasing).
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
    kind : str
        ``"smart-stack"``, ``"flat"`` or ``"tileconfig"`` (see `ScanSpec`).
    pixel_type : str
        ``"rgb8"``, ``"grey8"`` or ``"grey16"``.
    tile_format : str
        ``"jpeg"``, ``"png"`` or ``"tiff"``.
    layout : str
        Metadata layout: ``"v2"``, ``"v3"`` or ``"v3-slash"``.
    usercomment_prefix : bool
        UserComment starts with the 8-byte ``ASCII\\0\\0\\0`` character code.
    tile_shape : tuple of int
        (height, width) of every image.
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
    tile_config : str or None
        Name of the TileConfiguration file (tileconfig kind), else None.
    config_origin_xy : tuple of float or None
        Canvas (x, y) of the TileConfiguration's (0, 0): a listed position plus it is the nominal corner.
    notes : list of str
        Anything a user of the truth should know (upscaling, skipped truth.png, fallbacks).
    """

    kind: str
    pixel_type: str
    tile_format: str
    layout: str
    usercomment_prefix: bool
    tile_shape: tuple[int, int]
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
    tile_config: str | None = None
    config_origin_xy: tuple[float, float] | None = None
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
        matrix = np.asarray(self.csm_matrix, dtype=float) * (self.calibration_width / self.tile_shape[1])
        row_col = np.asarray(stage_xy, dtype=float).reshape(-1, 2) @ np.linalg.inv(matrix)
        return row_col[:, ::-1] + np.asarray(self.stage_zero_canvas_xy)

    def central_paths(self, scan_dir: str | os.PathLike) -> list[Path]:
        """Paths of the truly sharpest image of each position, in scan order."""
        return [Path(scan_dir) / p.folder / p.central_file for p in self.positions]

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (what ``truth.json`` holds)."""
        return jsonable(asdict(self))


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
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
        raise OfmTilingError(path, "no ground truth here (not a scan made by ofm-tiling example)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OfmTilingError(path, f"cannot read the ground truth ({exc})") from None
    if isinstance(doc, dict) and doc.get("schema") == _OLD_SCHEMA:
        doc = _upgrade(doc)
    if not isinstance(doc, dict) or doc.get("schema") != TRUTH_SCHEMA:
        raise OfmTilingError(path, f"not a ground-truth file of schema {TRUTH_SCHEMA}")
    tuples = {"tile_shape", "config_origin_xy", "grid", "calibration_resolution", "stage_zero_canvas_xy",
              "canvas_shape"}
    pos_tuples = {"grid_cr", "true_xy", "nominal_xy", "stage_xyz"}
    positions = []
    for p in doc.pop("positions"):
        pos: dict[str, Any] = {k: tuple(v) if k in pos_tuples else v for k, v in p.items()}
        positions.append(PositionTruth(**pos))
    rest: dict[str, Any] = {k: tuple(v) if k in tuples and v is not None else v for k, v in doc.items()}
    return ScanTruth(positions=positions, **rest)


def _upgrade(doc: dict[str, Any]) -> dict[str, Any]:
    """A truth of schema 1 (smart stacks of 8-bit RGB JPEGs, ``tile_size`` as (w, h)) in today's form."""
    out = {"kind": "smart-stack", "pixel_type": "rgb8", "tile_format": "jpeg", **doc, "schema": TRUTH_SCHEMA}
    w, h = out.pop("tile_size")
    out["tile_shape"] = [h, w]
    return out

