"""What the microscope does to the canvas: defocus blur, illumination (vignetting, gradient) and sensor noise.

Pure functions on arrays; `tiles` applies them position by position.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from ..pixels import luma

FULL_WIDTH = 3280  # Pi camera v2 full-resolution width, the reference for blur and feature sizes
GREY16_SCALE = 257  # 8-bit grey level -> 16-bit (255 -> 65535)


def default_defocus(width: int) -> float:
    """Blur sigma per plane from focus: 1.5 px at full width, scaled with the tile, at least 0.8 px."""
    return max(1.5 * width / FULL_WIDTH, 0.8)


def noise_lut(sigma: float) -> np.ndarray | None:
    """Gaussian quantiles of 256 equally likely levels: random bytes -> sensor noise, cheaply."""
    if sigma <= 0:
        return None
    from scipy.special import ndtri

    return np.rint(sigma * ndtri((np.arange(256) + 0.5) / 256)).astype(np.int16)


def gain(h: int, w: int, vignetting: float, gradient_angle: float | None) -> np.ndarray | None:
    """Multiplicative illumination over the tile: radial vignetting and/or a gentle linear gradient."""
    if not vignetting and gradient_angle is None:
        return None
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx / max(w - 1, 1) - 0.5, yy / max(h - 1, 1) - 0.5
    out = np.ones((h, w), dtype=np.float32)
    if vignetting:
        out *= 1 - vignetting * (xx ** 2 + yy ** 2) / 0.5
    if gradient_angle is not None:
        out *= 1 + 0.06 * (math.cos(gradient_angle) * xx + math.sin(gradient_angle) * yy)
    return out[..., None]


def defocus(image: Image.Image, sigma: float) -> Image.Image:
    """Gaussian blur; wide ones at half resolution, 4x cheaper and indistinguishable once upsampled."""
    if sigma <= 0:
        return image
    if sigma < 3 or image.width % 2 or image.height % 2:
        return image.filter(ImageFilter.GaussianBlur(sigma))
    # 2x2 averaging and bilinear upsampling each add about 0.5 px (full resolution) of blur sigma.
    half = image.reduce(2).filter(ImageFilter.GaussianBlur(math.sqrt(sigma ** 2 - 0.5) / 2))
    return half.resize(image.size, Image.Resampling.BILINEAR)


def plane_at(level: Callable[[int], np.ndarray], distance: np.ndarray) -> np.ndarray:
    """One plane from whole-plane blur levels, given every column's distance from focus in planes.

    Flat focus returns the level itself (int16); tilted focus interpolates column by column
    between the two nearest levels (float32).
    """
    lo = np.floor(distance).astype(int)
    if np.all(lo == lo[0]) and np.allclose(distance, lo[0]):
        return level(int(lo[0])).astype(np.int16)
    first = level(int(lo[0]))
    img = np.empty(first.shape, dtype=np.float32)
    frac = (distance - lo).astype(np.float32)
    for d0 in np.unique(lo):
        cols = lo == d0
        f = frac[cols][None, :, None]
        img[:, cols] = level(int(d0))[:, cols] * (1 - f) + level(int(d0) + 1)[:, cols] * f
    return img


def sensor(img: np.ndarray, pixel_type: str, *, lut: np.ndarray | None, sigma: float,
           rng: np.random.Generator) -> np.ndarray:
    """Light on the sensor (RGB, 0..255) -> saved pixels of `pixel_type`, with fresh noise per call."""
    h, w = img.shape[:2]
    if pixel_type == "grey16":
        grey = luma(img).astype(np.float64) * GREY16_SCALE
        if sigma > 0:
            grey += rng.normal(0.0, sigma * GREY16_SCALE, size=grey.shape)
        return np.clip(np.rint(grey), 0, 65535).astype(np.uint16)
    if pixel_type == "grey8":
        img = luma(img)
    bands = 1 if img.ndim == 2 else img.shape[2]
    if lut is not None:
        noise = lut[np.frombuffer(rng.bytes(h * w * bands), dtype=np.uint8)].reshape(img.shape)
        img = img + noise
    return np.clip(np.rint(img) if img.dtype != np.int16 else img, 0, 255).astype(np.uint8)
