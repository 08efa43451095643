"""The mosaic's JPEG preview (``preview.jpg``): a downscaled picture for a quick look."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

import numpy as np
from PIL import Image

from .display import DisplayRange, range_of, to_display
from .files import atomic_file
from .pixels import pixel_type_of

__all__ = ["write_preview", "preview_shape", "write_preview_from_rows"]

_JPEG_MAX_SIDE = 65500  # JPEG cannot store images taller or wider than 65535 pixels


class RowSource(Protocol):
    """An image readable in row ranges, e.g. :class:`ofm_tiling.bands.Spool`."""

    shape: tuple[int, int]

    def read(self, y0: int, y1: int) -> np.ndarray: ...


def preview_width(shape: tuple[int, int], width: int) -> int:
    """Preview width: `width` at most, never enlarged, height within JPEG's limit."""
    h, w = shape
    return max(1, min(int(width), w, (_JPEG_MAX_SIDE * w) // h))


def preview_shape(shape: tuple[int, int], width: int) -> tuple[int, int]:
    """(height, width) of the preview of an image of `shape` asked to be `width` wide."""
    new_w = preview_width(shape, width)
    return max(1, round(shape[0] * new_w / shape[1])), new_w


def write_preview(path: str | os.PathLike, image: np.ndarray, *, width: int = 2000, quality: int = 85,
                  display: DisplayRange | None = None) -> None:
    """Save a downscaled JPEG of an image (atomically).

    Parameters
    ----------
    path : str or os.PathLike
        Output JPEG file.
    image : ndarray
        uint8 RGB ``(H, W, 3)``, uint8 grey ``(H, W)`` or uint16 grey ``(H, W)``.
    width : int, optional
        Width of the preview in pixels. Images are never enlarged, and very tall images are
        made narrower so the height stays within JPEG's 65535-pixel limit.
    quality : int, optional
        JPEG quality.
    display : DisplayRange, optional
        How a 16-bit image is scaled for display (:mod:`ofm_tiling.display`); default: the range
        of `image` itself. 8-bit images are shown as they are.
    """
    image = np.asarray(image)
    if pixel_type_of(image) is None:
        raise ValueError(f"image must be uint8 (H, W, 3), uint8 (H, W) or uint16 (H, W), got {image.dtype} "
                         f"{image.shape}")
    if image.dtype == np.uint16:
        image = to_display(image, display or range_of(image))
    h, w = image.shape[:2]
    new_h, new_w = preview_shape((h, w), width)
    im = Image.fromarray(image)
    if (new_w, new_h) != (w, h):
        # reducing_gap: a fast integer box reduction first, then Lanczos for the remainder.
        im = im.resize((new_w, new_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    with atomic_file(path) as tmp:
        im.save(tmp, format="JPEG", quality=quality, optimize=True)


def write_preview_from_rows(path: str | os.PathLike, source: RowSource, shape: tuple[int, int], *,
                            quality: int = 85, rows: int = 256,
                            display: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
    """Resize an image read in row ranges to `shape`, a block of output rows at a time.

    Each block reads only the source rows it needs plus the Lanczos support, and resizes them with
    a sub-pixel source box, so memory stays at the preview's own size and blocks join seamlessly.
    The preview is assembled in Pillow and saved without Huffman optimisation, which would buffer
    every DCT coefficient of the image (twice the preview's size) for a file ~5 % smaller.
    A grey source gives a grey preview. `display` turns the rows read into 8-bit pixels first
    (e.g. :func:`ofm_tiling.display.to_display` for a 16-bit source); default: they are 8-bit.
    """
    height, width = shape
    src_h, src_w = source.shape
    step = src_h / height  # source rows per preview row
    margin = int(np.ceil(3 * step)) + 2
    out: Image.Image | None = None
    for o0 in range(0, height, rows):
        o1 = min(height, o0 + rows)
        s0, s1 = o0 * step, o1 * step
        r0, r1 = max(0, int(s0) - margin), min(src_h, int(np.ceil(s1)) + margin)
        pixels = source.read(r0, r1)
        block = Image.fromarray(pixels if display is None else display(pixels))
        if out is None:
            out = Image.new(block.mode, (width, height))
        out.paste(block.resize((width, o1 - o0), Image.Resampling.LANCZOS, box=(0, s0 - r0, src_w, s1 - r0)), (0, o0))
    assert out is not None  # height >= 1
    with atomic_file(path) as tmp:
        out.save(tmp, format="JPEG", quality=quality)
