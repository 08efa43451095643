"""Decoding JPEG tiles: full colour, grey, and fast reduced-resolution (DCT-scaled) decodes."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .errors import OfmTilingError

Image.MAX_IMAGE_PIXELS = None  # tiles are trusted to be large; mosaics are never opened with Pillow


def _open(path: str | os.PathLike, mode: str, scale: int) -> Image.Image:
    try:
        im = Image.open(path)
        size = (-(-im.width // scale), -(-im.height // scale))
        if im.format == "JPEG":
            # libjpeg decodes straight to grey, and with DCT-domain scaling at 1/2, 1/4 or 1/8 size,
            # for a fraction of the cost of a full decode.
            im.draft(mode, size)
        im.load()
        if im.mode != mode:  # converting an RGB JPEG to RGB would only copy it
            im = im.convert(mode)
    except FileNotFoundError:
        raise OfmTilingError(path, "file not found") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise OfmTilingError(path, f"cannot decode image ({exc})") from None
    if im.size != size:
        im = im.resize(size, Image.BILINEAR)
    return im


def read_rgb(path: str | os.PathLike, scale: int = 1) -> np.ndarray:
    """Decode an image as an (H, W, 3) uint8 array, optionally reduced by `scale` (1, 2, 4, 8)."""
    return np.asarray(_open(path, "RGB", scale))


def read_gray(path: str | os.PathLike, scale: int = 1) -> np.ndarray:
    """Decode an image as an (H, W) float32 luminance array, optionally reduced by `scale`.

    With `scale` > 1 the reduced size is ``ceil(W / scale) x ceil(H / scale)``, which is what libjpeg's
    DCT scaling returns, so positions scale exactly by `scale`.
    """
    return np.asarray(_open(path, "L", scale)).astype(np.float32)  # asarray(dtype=) converts pixel by pixel
