"""Decoding tiles: JPEG (full colour, grey, fast reduced-resolution DCT-scaled decodes), PNG and TIFF.

Full-resolution JPEG decodes go through libjpeg-turbo in imagecodecs, which writes straight into a
numpy array: about 3x faster than decoding with Pillow and then converting its image to numpy (for
an 8 MP tile, 15 ms against 50 ms here). Reduced decodes use Pillow, whose libjpeg DCT scaling
imagecodecs does not offer. Anything imagecodecs declines (another format, CMYK, a damaged file)
goes to Pillow, which decodes it or gives the error. Pillow's decompression-bomb guard stays on
(a microscope tile is far below its 179-megapixel limit); an image beyond it is a one-line error.

:func:`read_tile` reads any tile in its own pixel type (`ofm_tiling.pixels.PIXEL_TYPES`): 8-bit
RGB, 8-bit grey or 16-bit grey. Pillow's "L" conversion of a 16-bit image clips every value above
255 (Pillow 13), so 16-bit tiles never go through it: TIFF is read by tifffile, PNG by Pillow as
"I;16" straight into uint16. :func:`tile_luminance` is what registration reads of any tile.
"""
from __future__ import annotations

import os

import imagecodecs
import numpy as np
from PIL import Image

from .errors import OfmTilingError
from .pixels import block_mean, luma, pixel_type_of

_TAIL = 256  # an end-of-image marker is looked for in this many final bytes (as collect does)


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise OfmTilingError(path, "file not found") from None
    except OSError as exc:
        raise OfmTilingError(path, f"cannot read ({(exc.strerror or str(exc)).lower()})") from None


def _decode_jpeg(path: str | os.PathLike, colorspace: str | None) -> np.ndarray | None:
    """Full-size decode with libjpeg-turbo, or None to leave the file to Pillow.

    `colorspace` "RGB" or "GRAY" converts to that; None keeps the file's own (grey or RGB).
    """
    data = _read_bytes(path)
    # libjpeg fills a truncated image with grey and only warns; Pillow refuses it, so it goes there.
    if data[:2] != b"\xff\xd8" or b"\xff\xd9" not in data[-_TAIL:]:
        return None
    try:
        image = (imagecodecs.jpeg8_decode(data) if colorspace is None
                 else imagecodecs.jpeg8_decode(data, outcolorspace=colorspace))
    except imagecodecs.Jpeg8Error:
        return None
    if colorspace is None:
        return image if image.dtype == np.uint8 and pixel_type_of(image) is not None else None
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
    scale exactly by `scale`. For 8-bit images: a 16-bit tile would be clipped to 255 by Pillow's
    "L" conversion, so registration reads tiles of any type with :func:`tile_luminance`.
    """
    return _read(path, "L", scale)


def read_gray(path: str | os.PathLike, scale: int = 1) -> np.ndarray:
    """:func:`read_luminance` as float32."""
    return read_luminance(path, scale).astype(np.float32)  # asarray(dtype=) converts pixel by pixel


_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _magic(path: str | os.PathLike) -> bytes:
    """The first four bytes of the file (which say its format)."""
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except FileNotFoundError:
        raise OfmTilingError(path, "file not found") from None
    except OSError as exc:
        raise OfmTilingError(path, f"cannot read ({(exc.strerror or str(exc)).lower()})") from None


def is_jpeg(path: str | os.PathLike) -> bool:
    """Whether the file starts like a JPEG (by content, not by name)."""
    return _magic(path)[:2] == b"\xff\xd8"


def _read_tiff(path: str | os.PathLike) -> np.ndarray:
    import tifffile

    try:
        image = tifffile.imread(path, key=0)
    except FileNotFoundError:
        raise OfmTilingError(path, "file not found") from None
    except Exception as exc:  # any reader or codec error means a damaged or unsupported file
        raise OfmTilingError(path, f"cannot decode image ({exc})") from None
    if image.ndim == 3 and image.shape[2] == 4 and image.dtype == np.uint8:
        image = image[..., :3]  # RGBA: the alpha channel holds no picture
    return np.ascontiguousarray(image)


def _read_pillow(path: str | os.PathLike) -> np.ndarray:
    """PNG (and anything else Pillow reads) in its own type: 16-bit grey stays 16-bit."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                return np.asarray(im).astype(np.uint16)  # native byte order; "I" holds 16-bit PNG values
            if im.mode not in ("L", "RGB"):
                im = im.convert("L" if im.mode in ("1", "LA") else "RGB")
            return np.asarray(im)
    except FileNotFoundError:
        raise OfmTilingError(path, "file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise OfmTilingError(path, f"cannot decode image ({exc})") from None


def read_tile(path: str | os.PathLike, pixel_type: str | None = None) -> np.ndarray:
    """Decode a JPEG, PNG or TIFF tile in its own pixel type.

    Parameters
    ----------
    path : path-like
        The tile.
    pixel_type : {"rgb8", "grey8", "grey16"}, optional
        The type the tile must hold (that of the other tiles); a tile of another type is an error.

    Returns
    -------
    ndarray
        uint8 ``(H, W, 3)`` for rgb8, uint8 ``(H, W)`` for grey8, uint16 ``(H, W)`` for grey16.

    Raises
    ------
    OfmTilingError
        One line naming the file: missing, damaged, of an unsupported type, or not `pixel_type`.
    """
    magic = _magic(path)
    if magic[:2] == b"\xff\xd8":
        image = _decode_jpeg(path, None)  # the file's own colour space: grey or RGB
        if image is None:
            image = _read_pillow(path)
    elif magic in _TIFF_MAGIC:
        image = _read_tiff(path)
    else:
        image = _read_pillow(path)
    found = pixel_type_of(image)
    if found is None:
        raise OfmTilingError(path, f"holds {image.dtype} pixels of shape {image.shape}: "
                                   "only 8-bit RGB, 8-bit grey and 16-bit grey tiles are supported")
    if pixel_type is not None and found != pixel_type:
        raise OfmTilingError(path, f"holds {found} pixels, the other tiles {pixel_type}")
    return image


def tile_luminance(path: str | os.PathLike, scale: int = 1) -> np.ndarray:
    """What registration reads of any tile: its luminance, reduced `scale` times.

    A JPEG is decoded straight to grey by :func:`read_luminance` (uint8, DCT-scaled when reduced).
    PNG and TIFF tiles are decoded whole (:func:`read_tile`) and reduced by block means as float32,
    which keeps 16-bit precision (no clipping, no rounding to 8 bits); the size is
    ``ceil(h / scale) x ceil(w / scale)`` in both cases.
    """
    if is_jpeg(path):
        return read_luminance(path, scale)
    image = read_tile(path)
    grey = luma(image) if image.ndim == 3 else image
    return block_mean(grey, int(scale))
