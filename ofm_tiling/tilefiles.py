"""Tile image files: the formats ofm-tiling reads, a tile's size and pixel type from its header,
and its name in ``use/``.

Only the header is read (Pillow opens a file lazily), so hundreds of tiles are checked in well
under a second. The pixel type rule, one home for it:

=========================================  ==========  =====================================
Pillow mode                                 pixel type  note
=========================================  ==========  =====================================
``RGB``                                     ``rgb8``
``RGBA``                                    ``rgb8``    alpha is dropped (a note says so)
``L``                                       ``grey8``
``I;16``, ``I;16B``, ``I;16L``              ``grey16``
``I`` of a PNG (16-bit PNG in some Pillow)  ``grey16``
16-bit RGB, palette, 1-bit, 32-bit, float   error       one line naming the file and its mode
=========================================  ==========  =====================================
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import OfmTilingError

__all__ = ["TILE_SUFFIXES", "TileHeader", "read_tile_header", "use_suffix", "check_same_kind", "size_mismatch"]

#: File name endings of tiles (compared in lower case).
TILE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
#: Pillow's format name -> the suffix a tile of that format gets in ``use/`` (``.jpeg`` as ever).
_USE_SUFFIX = {"JPEG": ".jpeg", "MPO": ".jpeg", "PNG": ".png", "TIFF": ".tif"}
_PIXEL_TYPE = {"RGB": "rgb8", "RGBA": "rgb8", "L": "grey8", "I;16": "grey16", "I;16B": "grey16",
               "I;16L": "grey16", "I;16N": "grey16"}
_SUPPORTED = "8-bit RGB, 8-bit grey or 16-bit grey"


@dataclass(frozen=True)
class TileHeader:
    """What a tile's header says.

    Attributes
    ----------
    path : Path
    width, height : int
    pixel_type : str
        One of `ofm_tiling.pixels.PIXEL_TYPES`.
    format : str
        Pillow's format name (``JPEG``, ``PNG``, ``TIFF``; ``MPO`` is a JPEG).
    note : str or None
        What the user should know (alpha channel dropped), or None.
    """

    path: Path
    width: int
    height: int
    pixel_type: str
    format: str
    note: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)``."""
        return self.height, self.width


def is_tile_file(path: Path) -> bool:
    """A file whose name ends like a tile's (see `TILE_SUFFIXES`), not hidden."""
    return path.suffix.lower() in TILE_SUFFIXES and not path.name.startswith(".")


def read_tile_header(path: str | os.PathLike) -> TileHeader:
    """Size, pixel type and format of one tile, from its header only.

    Raises
    ------
    OfmTilingError
        The file is missing, unreadable, not a JPEG/PNG/TIFF image, or of an unsupported pixel
        type.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about damaged TIFF tags; the error below says it
            with Image.open(path) as im:
                mode, fmt, (width, height) = im.mode, im.format or "", im.size
                raw = [t.args[0] if isinstance(t.args, tuple) else t.args for t in im.tile]
    except FileNotFoundError:
        raise OfmTilingError(path, "file not found") from None
    except UnidentifiedImageError:
        raise OfmTilingError(path, "not a readable JPEG, PNG or TIFF image (damaged?)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise OfmTilingError(path, f"cannot read the image header ({exc})") from None
    if fmt not in _USE_SUFFIX:
        raise OfmTilingError(path, f"is a {fmt} image; tiles must be JPEG, PNG or TIFF")
    pixel_type = _PIXEL_TYPE.get(mode) or ("grey16" if mode == "I" and fmt == "PNG" else None)
    if mode in ("RGB", "RGBA") and any(";16" in str(r) for r in raw):
        pixel_type, mode = None, "16-bit RGB"  # Pillow reads it as 8-bit: refused rather than cut to 8 bits
    if pixel_type is None:
        raise OfmTilingError(path, f"pixel mode {mode} is not supported (tiles must be {_SUPPORTED})")
    note = "its alpha channel is ignored" if mode == "RGBA" else None
    return TileHeader(path, width, height, pixel_type, fmt, note)


def use_suffix(header: TileHeader) -> str:
    """The suffix of this tile's copy in ``use/``: ``.jpeg``, ``.png`` or ``.tif`` by its format."""
    return _USE_SUFFIX[header.format]


def size_mismatch(path: Path, size: tuple[int, int], first: Path, first_size: tuple[int, int]) -> OfmTilingError:
    """The error for a tile whose (width, height) is not the first tile's."""
    return OfmTilingError(path, f"image is {size[0]}x{size[1]} but {first} is {first_size[0]}x{first_size[1]}; "
                                "all tiles must be the same size")


def check_same_kind(headers: list[TileHeader]) -> None:
    """Every tile has the size and pixel type of the first (one-line error naming the odd file)."""
    first = headers[0]
    for h in headers[1:]:
        if h.shape != first.shape:
            raise size_mismatch(h.path, (h.width, h.height), first.path, (first.width, first.height))
        if h.pixel_type != first.pixel_type:
            raise OfmTilingError(h.path, f"pixels are {h.pixel_type} but {first.path}'s are {first.pixel_type}; "
                                         "all tiles must have the same pixel type")
