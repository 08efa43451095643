"""Decoding JPEG tiles: full colour, grey, and fast reduced-resolution (DCT-scaled) decodes.

Full-resolution JPEG decodes go through libjpeg-turbo in imagecodecs, which writes straight into a
numpy array: about 3x faster than decoding with Pillow and then converting its image to numpy (for
an 8 MP tile, 15 ms against 50 ms here). Reduced decodes use Pillow, whose libjpeg DCT scaling
imagecodecs does not offer. Anything imagecodecs declines (another format, CMYK, a damaged file)
goes to Pillow, which decodes it or gives the error. Pillow's decompression-bomb guard stays on
(a microscope tile is far below its 179-megapixel limit); an image beyond it is a one-line error.
"""
from __future__ import annotations

import os

import imagecodecs
import numpy as np
from PIL import Image

from .errors import OfmTilingError

_TAIL = 256  # an end-of-image marker is looked for in this many final bytes (as collect does)


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise OfmTilingError(path, "file not found") from None
    except OSError as exc:
        raise OfmTilingError(path, f"cannot read ({(exc.strerror or str(exc)).lower()})") from None


def _decode_jpeg(path: str | os.PathLike, colorspace: str) -> np.ndarray | None:
    """Full-size decode with libjpeg-turbo, or None to leave the file to Pillow."""
    data = _read_bytes(path)
    # libjpeg fills a truncated image with grey and only warns; Pillow refuses it, so it goes there.
    if data[:2] != b"\xff\xd8" or b"\xff\xd9" not in data[-_TAIL:]:
        return None
    try:
        image = imagecodecs.jpeg8_decode(data, outcolorspace=colorspace)
    except imagecodecs.Jpeg8Error:
        return None
    want = 3 if colorspace == "RGB" else 2
    return image if image.ndim == want and image.dtype == np.uint8 else None


def _open(path: str | os.PathLike, mode: str, scale: int) -> Image.Image:
    try:
        im: Image.Image = Image.open(path)
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
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise OfmTilingError(path, f"cannot decode image ({exc})") from None
    if im.size != size:
        im = im.resize(size, Image.Resampling.BILINEAR)
    return im


def _read(path: str | os.PathLike, mode: str, scale: int) -> np.ndarray:
    """Full size through libjpeg-turbo when it can, else (and for reduced sizes) through Pillow."""
    if int(scale) == 1:
        image = _decode_jpeg(path, {"RGB": "RGB", "L": "GRAY"}[mode])
        if image is not None:
            return image
    return np.asarray(_open(path, mode, int(scale)))


def read_rgb(path: str | os.PathLike, scale: int = 1) -> np.ndarray:
    """Decode an image as an (H, W, 3) uint8 array, optionally reduced by `scale` (1, 2, 4, 8)."""
    return _read(path, "RGB", scale)


def read_luminance(path: str | os.PathLike, scale: int = 1) -> np.ndarray:
    """Decode an image as an (H, W) uint8 luminance array, optionally reduced by `scale`.

    Luminance is ITU-R 601, as Pillow's "L"; for a JPEG it is the Y channel as stored, so the
    colour planes are never converted. With `scale` > 1 the reduced size is
    ``ceil(W / scale) x ceil(H / scale)``, which is what libjpeg's DCT scaling returns, so positions
    scale exactly by `scale`.
    """
    return _read(path, "L", scale)


def read_gray(path: str | os.PathLike, scale: int = 1) -> np.ndarray:
    """:func:`read_luminance` as float32."""
    return read_luminance(path, scale).astype(np.float32)  # asarray(dtype=) converts pixel by pixel
