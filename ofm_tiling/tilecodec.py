"""How the OME-TIFF's tiles are stored: the pixel format, the compression and its options.

The rules of `ofm_tiling.pyramid`'s codec, in their own home so that the option check
(`ofm_tiling.options`) can use them without loading the writer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import OptionError
from .options import CHOICES, check_quality

__all__ = ["COMPRESSIONS", "PixelFormat", "Codec", "check_options", "compression_for"]

COMPRESSIONS = CHOICES["compression"]  # tile compressions by name ("zlib" is accepted for "deflate")


@dataclass(frozen=True)
class PixelFormat:
    """What one pixel holds: 3 channels (RGB) or 1 (grey), of `dtype`."""

    channels: int = 3
    dtype: np.dtype = np.dtype(np.uint8)

    @property
    def sample(self) -> tuple[int, ...]:
        """Trailing array axes of a pixel: ``(3,)`` for RGB, ``()`` for grey."""
        return (3,) if self.channels == 3 else ()

    @property
    def bytes(self) -> int:  # per pixel
        return self.channels * self.dtype.itemsize


@dataclass(frozen=True)
class Codec:
    """Checked tile compression: `name` is one of :data:`COMPRESSIONS`; `quality` is for JPEG."""

    name: str
    quality: int

    def tifffile_options(self, pixels: PixelFormat) -> dict:
        """Keywords of ``tifffile.TiffWriter.write`` for tiles of `pixels`."""
        photometric = "rgb" if pixels.channels == 3 else "minisblack"
        opts: dict = {"photometric": photometric}
        if self.name == "jpeg":
            args: dict = {"level": self.quality}
            if pixels.channels == 3:
                # RGB JPEG at full colour resolution: see the module's docstring.
                args["outcolorspace"] = "RGB"
                opts["subsampling"] = (1, 1)
            opts.update(compression="jpeg", compressionargs=args)
        elif self.name == "deflate":
            # Horizontal differencing typically shrinks deflated micrographs by a further ~20%.
            opts.update(compression="zlib", predictor=True)
        else:
            opts["compression"] = None
        return opts


def check_options(*, compression: str = "jpeg", quality: int = 90, dtype: np.dtype | type = np.uint8) -> Codec:
    """Check the tile compression options before any work starts.

    Parameters
    ----------
    compression : {"jpeg", "deflate", "none"}
        Tile compression ("zlib" is a synonym of "deflate").
    quality : int
        JPEG quality, an integer from 1 to 100 (checked whatever the compression).
    dtype : numpy dtype
        Pixel type: uint8, or uint16 (deflate or none only: baseline JPEG holds 8 bits).

    Raises
    ------
    ValueError
        Naming the parameter and the allowed values.
    """
    name = str(compression).lower()
    name = "deflate" if name == "zlib" else name
    if name not in COMPRESSIONS:
        raise OptionError("compression", f"must be one of {', '.join(map(repr, COMPRESSIONS))}, got {compression!r}")
    q = check_quality(quality)
    dt = np.dtype(dtype)
    if dt not in (np.uint8, np.uint16):
        raise ValueError(f"dtype must be uint8 or uint16, got {dt}")
    if dt == np.uint16 and name == "jpeg":
        raise OptionError("compression", "must be 'deflate' or 'none' for uint16 pixels (JPEG holds 8 bits)")
    return Codec(name, q)


def compression_for(compression: str, pixel_type: str) -> tuple[str, str | None]:
    """The compression a run uses for tiles of `pixel_type`, and a note when it differs.

    16-bit grey is always stored losslessly: "jpeg" (the default) becomes "deflate", with a note
    saying so; every other choice is kept as given.
    """
    name = str(compression).lower()
    if pixel_type == "grey16" and name == "jpeg":
        return "deflate", "16-bit tiles: the mosaic is stored losslessly (deflate), as JPEG holds 8 bits"
    return compression, None
