"""Rendering and writing every position's images (in worker processes) and the truth canvas.

Each position renders its sharp tile once (with a margin, so defocus mixes in light from just
outside the field), derives every plane from cached blur levels, adds illumination and fresh
sensor noise, and saves the images in the scan's format and pixel type.
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .optics import defocus, gain, noise_lut, plane_at, sensor
from .texture import Canvas


@dataclass(frozen=True)
class TileTask:
    """Everything one worker needs to write one position's images."""

    paths: list[str]
    exif: list[bytes | None]  # per image; None: no EXIF
    true_xy: tuple[float, float]
    margin: int
    defocus: float
    k_focus: int
    tilt: float
    vignetting: float
    gradient_angle: float | None
    quality: int
    rng: list[int]


@dataclass(frozen=True)
class Sensor:
    """What every tile of a scan shares: size, pixel type, format and noise."""

    tile_hw: tuple[int, int]
    pixel_type: str
    tile_format: str
    noise_sigma: float


_STATE: dict[str, Any] = {}


def _process_context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _init_worker(canvas: Canvas, camera: Sensor) -> None:
    _STATE.update(canvas=canvas, camera=camera, noise_lut=noise_lut(camera.noise_sigma))


def write_pixels(canvas: Canvas, tasks: list[TileTask], truth_hw: tuple[int, int] | None, *, camera: Sensor,
                 workers: int, progress: Callable[[int, int], None] | None) -> np.ndarray | None:
    """Write every position's images (in `workers` processes) and render the truth canvas if asked."""
    strips = []
    truth = None
    if truth_hw is not None:
        rows = max(16, min(truth_hw[0], 4_000_000 // max(truth_hw[1], 1)))
        strips = [(y0, min(rows, truth_hw[0] - y0), truth_hw[1]) for y0 in range(0, truth_hw[0], rows)]
        truth = np.empty((*truth_hw, 3), dtype=np.uint8)
    if workers > 1 and len(tasks) + len(strips) > 1:
        # Not forked: a fork of a process with threads (a test runner, a GUI) can deadlock in its child.
        with ProcessPoolExecutor(max_workers=int(workers), initializer=_init_worker, initargs=(canvas, camera),
                                 mp_context=_process_context()) as pool:
            for done, _ in enumerate(pool.map(_write_position, tasks), 1):
                if progress:
                    progress(done, len(tasks))
            for y0, strip in pool.map(_render_strip, strips):
                truth[y0:y0 + strip.shape[0]] = strip  # type: ignore[index]
        return truth
    _init_worker(canvas, camera)
    try:
        for done, task in enumerate(tasks, 1):
            _write_position(task)
            if progress:
                progress(done, len(tasks))
        for args in strips:
            y0, strip = _render_strip(args)
            truth[y0:y0 + strip.shape[0]] = strip  # type: ignore[index]
    finally:
        _STATE.clear()
    return truth


def _write_position(task: TileTask) -> None:
    """Render one position's sharp tile, derive every plane and write the images."""
    canvas: Canvas = _STATE["canvas"]
    camera: Sensor = _STATE["camera"]
    h, w = camera.tile_hw
    m = task.margin
    tx, ty = task.true_xy
    rng = np.random.default_rng(task.rng)
    # Keep the rendered size even so the half-resolution blur maps back without a shift.
    sharp = canvas.render(tx - m, ty - m, w + 2 * m + w % 2, h + 2 * m + h % 2)
    pil = Image.fromarray(np.clip(np.rint(sharp), 0, 255).astype(np.uint8))
    del sharp
    levels: dict[int, np.ndarray] = {}

    def level(d: int) -> np.ndarray:
        """The tile blurred by `d` planes of defocus (cached: planes either side of focus share it)."""
        if d not in levels:
            levels[d] = np.asarray(defocus(pil, task.defocus * d))[m:m + h, m:m + w]
        return levels[d]

    focus = task.k_focus + task.tilt * (np.arange(w) / max(w - 1, 1) - 0.5)  # plane in focus per column
    illumination = gain(h, w, task.vignetting, task.gradient_angle)
    for k, (path, exif) in enumerate(zip(task.paths, task.exif)):
        img = plane_at(level, np.abs(k - focus))
        if illumination is not None:
            img = img * illumination
        out = sensor(img, camera.pixel_type, lut=_STATE["noise_lut"], sigma=camera.noise_sigma, rng=rng)
        save_tile(path, out, camera.tile_format, quality=task.quality, exif=exif)


def save_tile(path: str, pixels: np.ndarray, tile_format: str, *, quality: int, exif: bytes | None) -> None:
    """Write one image: JPEG (with `exif`), PNG or TIFF, 8-bit RGB or 8/16-bit greyscale."""
    if tile_format == "tiff":
        import tifffile

        tifffile.imwrite(path, pixels, photometric="rgb" if pixels.ndim == 3 else "minisblack")
        return
    image = Image.fromarray(pixels)
    if tile_format == "png":
        image.save(path, "PNG", compress_level=1)
    elif exif is None:
        image.save(path, "JPEG", quality=quality)
    else:
        image.save(path, "JPEG", quality=quality, exif=exif)


def _render_strip(args: tuple[int, int, int]) -> tuple[int, np.ndarray]:
    y0, rows, width = args
    strip = _STATE["canvas"].render(0.0, float(y0), width, rows)
    return y0, np.clip(np.rint(strip), 0, 255).astype(np.uint8)
