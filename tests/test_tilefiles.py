"""Tile files (ofm_tiling.tilefiles): size, pixel type and format from real JPEG/PNG/TIFF headers
written by Pillow, tifffile and imagecodecs; the rule for other modes; one-line errors."""
from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.tilefiles import TILE_SUFFIXES, check_same_kind, read_tile_header, use_suffix

RGB = np.random.default_rng(0).integers(0, 255, (6, 10, 3), dtype=np.uint8)
GREY16 = (np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000)


def _pillow(path, array, mode=None):
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)
    return path


@pytest.mark.parametrize(("name", "write", "pixel_type", "fmt", "suffix"), [
    ("a.jpg", lambda p: _pillow(p, RGB), "rgb8", "JPEG", ".jpeg"),
    ("a.JPEG", lambda p: _pillow(p, RGB, "L"), "grey8", "JPEG", ".jpeg"),
    ("a.png", lambda p: _pillow(p, RGB), "rgb8", "PNG", ".png"),
    ("a.png", lambda p: _pillow(p, RGB, "L"), "grey8", "PNG", ".png"),
    ("a.png", lambda p: _pillow(p, GREY16), "grey16", "PNG", ".png"),
    ("a.tif", lambda p: tifffile.imwrite(p, RGB, photometric="rgb"), "rgb8", "TIFF", ".tif"),
    ("a.tiff", lambda p: tifffile.imwrite(p, RGB[..., 0]), "grey8", "TIFF", ".tif"),
    ("a.tif", lambda p: tifffile.imwrite(p, GREY16), "grey16", "TIFF", ".tif"),
    ("a.tif", lambda p: _pillow(p, GREY16), "grey16", "TIFF", ".tif"),
])
def test_pixel_type_size_and_format_from_the_header(tmp_path, name, write, pixel_type, fmt, suffix):
    path = tmp_path / name
    write(path)
    h = read_tile_header(path)
    assert (h.pixel_type, h.format, h.shape, h.note) == (pixel_type, fmt, (6, 10), None)
    assert use_suffix(h) == suffix and path.suffix.lower() in TILE_SUFFIXES


def test_rgba_is_rgb_with_a_note(tmp_path):
    h = read_tile_header(_pillow(tmp_path / "a.png", RGB, "RGBA"))
    assert h.pixel_type == "rgb8" and "alpha" in h.note


@pytest.mark.parametrize(("name", "write", "says"), [
    ("p.png", lambda p: _pillow(p, RGB, "P"), "pixel mode P is not supported"),
    ("b.png", lambda p: _pillow(p, RGB, "1"), "pixel mode 1 is not supported"),
    ("f.tif", lambda p: tifffile.imwrite(p, GREY16.astype(np.float32)), "pixel mode F is not supported"),
    ("c.tif", lambda p: tifffile.imwrite(p, np.zeros((6, 10, 3), np.uint16), photometric="rgb"),
     "16-bit RGB is not supported"),
    ("c.png", lambda p: p.write_bytes(imagecodecs.png_encode(np.zeros((6, 10, 3), np.uint16))),
     "16-bit RGB is not supported"),
    ("x.png", lambda p: _pillow(p.with_suffix(".bmp"), RGB).rename(p), "is a BMP image"),
    ("d.tif", lambda p: p.write_bytes(b"II*\0garbage" * 3), "not a readable JPEG, PNG or TIFF"),
    ("e.jpg", lambda p: p.write_bytes(b""), "not a readable JPEG, PNG or TIFF"),
    ("gone.png", lambda p: None, "file not found"),
])
def test_unusable_tiles_are_one_line_errors_naming_the_file(tmp_path, name, write, says):
    path = tmp_path / name
    write(path)
    with pytest.raises(OfmTilingError) as err:
        read_tile_header(path)
    assert err.value.path == str(path) and says in err.value.problem and "\n" not in str(err.value)


def test_all_tiles_share_size_and_pixel_type(tmp_path):
    a = read_tile_header(_pillow(tmp_path / "a.png", RGB))
    b = read_tile_header(_pillow(tmp_path / "b.png", RGB))
    check_same_kind([a, b])
    grey = read_tile_header(_pillow(tmp_path / "c.png", RGB, "L"))
    small = read_tile_header(_pillow(tmp_path / "d.png", RGB[:5]))
    with pytest.raises(OfmTilingError, match="c.png: pixels are grey8 but .*a.png's are rgb8"):
        check_same_kind([a, b, grey])
    with pytest.raises(OfmTilingError, match="d.png: image is 10x5 but .*a.png is 10x6"):
        check_same_kind([a, small])
