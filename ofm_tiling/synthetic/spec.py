"""`ScanSpec`: everything that decides a synthetic scan's content, checked when it is made.

Shapes follow the package's convention, (height, width) = (rows, cols) of pixels, except `grid`,
which counts positions as (columns, rows) like ``COLSxROWS`` on the command line.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ..options import PIXEL_TYPES

KINDS = ("smart-stack", "flat", "tileconfig")
TILE_FORMATS = ("jpeg", "png", "tiff")
LAYOUTS = ("v2", "v3", "v3-slash")
MISTAGS = ("none", "several", "wrong", "bad_json")
STYLES = ("raster", "snake")
SOURCES = ("real", "procedural")
ERROR_DISTS = ("uniform", "normal")
MIN_TILE = 16  # pixels, per side
OFM_KINDS = ("smart-stack", "flat")  # kinds whose images carry OFM metadata (so JPEG only)


@dataclass(frozen=True)
class ScanSpec:
    """What a synthetic scan holds; every field has a default, so name only what matters.

    Attributes
    ----------
    kind : {"smart-stack", "flat", "tileconfig"}
        ``smart-stack``: the OFM server's folders (scan ``data.json``, one ``{x}_{y}`` folder of a
        z-stack per position). ``flat``: one folder of JPEGs carrying OFM metadata, names that say
        nothing about the position, `planes` images per position. ``tileconfig``: one tile per
        position and a Fiji ``TileConfiguration.txt`` with the stage positions in pixels.
    grid : (int, int)
        Positions as (columns, rows).
    tile_shape : (int, int)
        (height, width) of every image in pixels, at least 16 each.
    overlap : float
        Fraction of a tile shared with each neighbour (the stride is ``(1 - overlap)`` tiles).
    planes : int, optional
        Images per position; default 9 for smart stacks, 1 for the other kinds (tileconfig: 1 only).
    layout : {"v2", "v3", "v3-slash"}
        OFM metadata layout (smart-stack and flat).
    usercomment_prefix : bool
        Start UserComment with the standard 8-byte ``ASCII\\0\\0\\0`` (OFM writes it raw).
    pixel_type : {"rgb8", "grey8", "grey16"}
        8-bit RGB, 8-bit greyscale (luma of the colour canvas) or 16-bit greyscale (the same x 257).
    tile_format : {"jpeg", "png", "tiff"}
        File format of the tiles; kinds with OFM metadata are JPEG, 16-bit is PNG or TIFF.
    source : {"real", "procedural"}
        Canvas: the real H&E sample (procedural with a warning when none is installed) or a
        procedural H&E-like texture.
    stage_error_px, error_dist : float, {"uniform", "normal"}
        Bound and distribution of the per-axis difference between true and recorded positions;
        normal has sigma ``stage_error_px / 2``, clipped to the bound.
    subpixel : bool
        Real-valued true positions (else whole pixels).
    blank_tiles : sequence of int
        Scan-order indices of positions showing blank glass (painted into the canvas, so
        neighbours see it too; their images get a gentle illumination gradient).
    incomplete : bool
        The last position failed: no images (smart-stack: a ``data.json`` error report).
    scramble_mtimes : bool
        Random file times, as after a copy; else the capture times.
    style : {"raster", "snake"}
        Scan order, row by row from the top; snake reverses every other row.
    jpeg_quality : int
        JPEG quality, 1-100.
    tilt : float
        Change of the in-focus plane across the tile width, in planes.
    focus_jitter : int
        The in-focus plane is ``planes // 2`` plus a random integer in ``[-focus_jitter, focus_jitter]``.
    mistag : mapping of int to str
        Scan-order index to ``"none"``, ``"several"``, ``"wrong"`` or ``"bad_json"`` (see `ScanTruth`).
    exif_datetime : bool, optional
        Write EXIF DateTime and DateTimeOriginal; None: only for the v3 layouts.
    pixel_size_um : float, optional
        Pixel size to record in the OFM metadata.
    defocus_px : float, optional
        Blur sigma per plane from focus; default ``max(1.5 * width / 3280, 0.8)``.
    noise_sigma : float
        Sensor noise standard deviation in 8-bit grey levels (x 257 for 16-bit).
    vignetting : float
        Fractional brightness loss in the tile corners.
    nucleus_radius_px : float, optional
        Procedural feature scale; default ``max(3, width / 100)``.
    zoom : float, optional
        Real source: canvas pixels per source pixel; default the smallest zoom >= 1 that fits.
    csm_rotation_deg : float
        Camera rotation relative to the stage axes.
    start_time : datetime, optional
        Scan start; default a fixed date.
    truth_png : bool, optional
        Write ``truth.png``; None: when the canvas is at most 100 MP.
    seed : int
        Everything is a deterministic function of the seed.
    """

    kind: str = "smart-stack"
    grid: tuple[int, int] = (4, 3)
    tile_shape: tuple[int, int] = (300, 400)
    overlap: float = 0.3
    planes: int | None = None
    layout: str = "v2"
    usercomment_prefix: bool = False
    pixel_type: str = "rgb8"
    tile_format: str = "jpeg"
    source: str = "real"
    stage_error_px: float = 20.0
    error_dist: str = "uniform"
    subpixel: bool = True
    blank_tiles: tuple[int, ...] = ()
    incomplete: bool = False
    scramble_mtimes: bool = True
    style: str = "raster"
    jpeg_quality: int = 90
    tilt: float = 0.0
    focus_jitter: int = 1
    mistag: Mapping[int, str] = field(default_factory=dict)
    exif_datetime: bool | None = None
    pixel_size_um: float | None = None
    defocus_px: float | None = None
    noise_sigma: float = 2.0
    vignetting: float = 0.0
    nucleus_radius_px: float | None = None
    zoom: float | None = None
    csm_rotation_deg: float = 1.1
    start_time: datetime | None = None
    truth_png: bool | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _normalise(self)
        check_spec(self)

    @property
    def cols(self) -> int:
        return self.grid[0]

    @property
    def rows(self) -> int:
        return self.grid[1]

    @property
    def n_positions(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def stack(self) -> int:
        """Images per position (`planes` after its default)."""
        assert self.planes is not None  # set by __post_init__
        return self.planes

    @property
    def has_ofm_metadata(self) -> bool:
        return self.kind in OFM_KINDS


def spec_from(spec: ScanSpec | None, overrides: Mapping[str, Any]) -> ScanSpec:
    """`spec` with `overrides` applied (a new ScanSpec from the fields when `spec` is None)."""
    names = {f.name for f in fields(ScanSpec)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown ScanSpec field(s): {', '.join(unknown)}")
    if spec is None:
        return ScanSpec(**overrides)
    return ScanSpec(**{**{n: getattr(spec, n) for n in names}, **overrides})


def _normalise(spec: ScanSpec) -> None:
    """Plain ints, sorted tuples and the kind-dependent default of `planes` (frozen: via object)."""
    def put(name: str, value: Any) -> None:
        object.__setattr__(spec, name, value)

    try:
        put("grid", (int(spec.grid[0]), int(spec.grid[1])) if len(spec.grid) == 2 else tuple(spec.grid))
        put("tile_shape", (int(spec.tile_shape[0]), int(spec.tile_shape[1]))
            if len(spec.tile_shape) == 2 else tuple(spec.tile_shape))
        put("blank_tiles", tuple(sorted({int(i) for i in spec.blank_tiles})))
        put("mistag", {int(k): v for k, v in dict(spec.mistag or {}).items()})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"grid, tile_shape, blank_tiles and mistag must hold integers ({exc})") from None
    if spec.planes is None:
        put("planes", 9 if spec.kind == "smart-stack" else 1)


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def check_spec(spec: ScanSpec) -> None:
    """Raise ValueError naming the first bad field, in one line."""
    for name, allowed in (("kind", KINDS), ("pixel_type", PIXEL_TYPES), ("tile_format", TILE_FORMATS),
                          ("layout", LAYOUTS), ("style", STYLES), ("source", SOURCES), ("error_dist", ERROR_DISTS)):
        _one_of(name, getattr(spec, name), allowed)
    if len(spec.grid) != 2 or min(spec.grid) < 1:
        raise ValueError(f"grid must be (columns, rows), each at least 1; got {spec.grid}")
    if len(spec.tile_shape) != 2 or min(spec.tile_shape) < MIN_TILE:
        raise ValueError(f"tile_shape must be (height, width), each at least {MIN_TILE} px; got {spec.tile_shape}")
    if not 0 <= spec.overlap < 0.95:
        raise ValueError(f"overlap must be in [0, 0.95); got {spec.overlap}")
    for name in ("stage_error_px", "focus_jitter", "noise_sigma", "seed"):
        if getattr(spec, name) < 0:
            raise ValueError(f"{name} must be >= 0; got {getattr(spec, name)}")
    if not 1 <= spec.jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be 1-100; got {spec.jpeg_quality}")
    _check_optics(spec)
    _check_kind(spec)
    _check_indices(spec)


def _check_optics(spec: ScanSpec) -> None:
    for name in ("pixel_size_um", "zoom", "nucleus_radius_px"):
        value = getattr(spec, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0; got {value}")
    if spec.defocus_px is not None and not spec.defocus_px >= 0:
        raise ValueError(f"defocus_px must be >= 0; got {spec.defocus_px}")
    if not 0 <= spec.vignetting < 1:
        raise ValueError(f"vignetting must be in [0, 1); got {spec.vignetting}")


def _check_kind(spec: ScanSpec) -> None:
    """The combinations a kind allows."""
    if spec.stack < 1:
        raise ValueError(f"planes must be >= 1; got {spec.planes}")
    if spec.has_ofm_metadata and spec.tile_format != "jpeg":
        raise ValueError(f"tile_format must be 'jpeg' for kind {spec.kind!r} (OFM metadata lives in EXIF)")
    if spec.pixel_type == "grey16" and spec.tile_format == "jpeg":
        raise ValueError("tile_format must be 'png' or 'tiff' for pixel_type 'grey16'")
    if spec.kind == "tileconfig":
        if spec.stack != 1:
            raise ValueError(f"planes must be 1 for kind 'tileconfig'; got {spec.planes}")
        if spec.mistag or spec.incomplete:
            raise ValueError("kind 'tileconfig' has no OFM metadata: mistag and incomplete do not apply")


def _check_indices(spec: ScanSpec) -> None:
    n = spec.n_positions
    for i in spec.blank_tiles:
        if not 0 <= i < n:
            raise ValueError(f"blank_tiles index {i} outside 0..{n - 1}")
    for i, kind in spec.mistag.items():
        if not 0 <= i < n:
            raise ValueError(f"mistag index {i} outside 0..{n - 1}")
        _one_of("mistag kind", kind, MISTAGS)
        if kind in ("several", "wrong") and spec.stack < 2:
            raise ValueError(f"mistag {kind!r} needs planes >= 2")
