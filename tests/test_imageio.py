"""Tile decoding: libjpeg-turbo straight to numpy, Pillow for everything it declines."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.imageio import read_gray, read_luminance, read_rgb, read_tile, tile_luminance
from ofm_tiling.pixels import luma, pixel_type_of


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    rng = np.random.default_rng(3)
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.normal(size=(243, 325, 3)), (2, 2, 0))
    return np.clip(noise * 300 + 128, 0, 255).astype(np.uint8)


def _save(path, array, **kw):
    Image.fromarray(array).save(path, **kw)
    return path


def test_jpeg_decodes_as_pillow_does(tmp_path, texture):
    path = _save(tmp_path / "t.jpeg", texture, quality=90)
    with Image.open(path) as im:
        expect = np.asarray(im.convert("RGB")).astype(int)
    with Image.open(path) as im:
        im.draft("L", im.size)  # libjpeg's own luminance output: the stored Y channel
        expect_y = np.asarray(im).astype(int)
    rgb = read_rgb(path)
    assert rgb.shape == (243, 325, 3) and rgb.dtype == np.uint8 and rgb.flags.c_contiguous
    # The same libjpeg-turbo algorithm (integer IDCT, fancy upsampling) in both.
    assert np.abs(rgb.astype(int) - expect).max() <= 1
    y = read_luminance(path)
    assert y.shape == (243, 325) and y.dtype == np.uint8
    assert np.abs(y.astype(int) - expect_y).max() <= 1
    g = read_gray(path)
    assert g.dtype == np.float32 and np.array_equal(g, y.astype(np.float32))


def test_reduced_decodes_round_the_size_up(tmp_path, texture):
    path = _save(tmp_path / "t.jpeg", texture)
    for scale in (2, 4, 8):
        assert read_rgb(path, scale).shape == (-(-243 // scale), -(-325 // scale), 3)
        assert read_luminance(path, scale).shape == (-(-243 // scale), -(-325 // scale))


def test_other_formats_and_colour_models_go_through_pillow(tmp_path, texture):
    png = _save(tmp_path / "t.png", texture)
    assert np.array_equal(read_rgb(png), texture)
    grey = _save(tmp_path / "grey.jpeg", texture[..., 1], quality=95)
    assert read_rgb(grey).shape == (243, 325, 3)
    cmyk = tmp_path / "cmyk.jpeg"
    Image.fromarray(texture).convert("CMYK").save(cmyk, quality=95)
    rgb = read_rgb(cmyk)
    assert rgb.shape == (243, 325, 3)
    assert np.abs(rgb.astype(int) - texture).mean() < 12


def test_damaged_files_are_one_line_errors(tmp_path, texture):
    good = _save(tmp_path / "t.jpeg", texture).read_bytes()
    truncated = tmp_path / "truncated.jpeg"
    truncated.write_bytes(good[: len(good) // 2])  # libjpeg alone would fill the rest with grey
    garbage = tmp_path / "garbage.jpeg"
    garbage.write_bytes(good[:200] + bytes(range(256)) * 20 + b"\xff\xd9")
    for path in (truncated, garbage, tmp_path / "missing.jpeg"):
        for read in (read_rgb, read_luminance):
            with pytest.raises(OfmTilingError) as info:
                read(path)
            assert path.name in str(info.value) and "\n" not in str(info.value)


def test_importing_leaves_pillows_bomb_guard_on(tmp_path, texture, monkeypatch):
    import subprocess
    import sys

    code = "import PIL.Image, ofm_tiling.imageio; print(PIL.Image.MAX_IMAGE_PIXELS)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(done.stdout) > 0  # no side effect at import
    # An image beyond the guard is a one-line error, not a traceback (guard lowered to test it).
    path = _save(tmp_path / "t.png", texture)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(OfmTilingError, match="t.png.*cannot decode image"):
        read_rgb(path)


# --- any tile in its own type -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def sixteen(texture) -> np.ndarray:
    """16-bit grey values over the whole range, with low bits that matter."""
    return (texture[..., 1].astype(np.uint16) * 257 + np.arange(325, dtype=np.uint16) % 97).astype(np.uint16)


def test_read_tile_keeps_each_type(tmp_path, texture, sixteen):
    import tifffile

    grey = texture[..., 1]
    tifffile.imwrite(tmp_path / "g16.tif", sixteen, photometric="minisblack", compression="zlib")
    tifffile.imwrite(tmp_path / "g8.tiff", grey, photometric="minisblack")
    tifffile.imwrite(tmp_path / "rgb.tif", texture, photometric="rgb")
    cases = {_save(tmp_path / "g16.png", sixteen): sixteen, tmp_path / "g16.tif": sixteen,
             _save(tmp_path / "g8.png", grey): grey, tmp_path / "g8.tiff": grey,
             _save(tmp_path / "rgb.png", texture): texture, tmp_path / "rgb.tif": texture}
    for path, expect in cases.items():
        got = read_tile(path)
        assert got.dtype == expect.dtype and got.shape == expect.shape, path.name
        np.testing.assert_array_equal(got, expect)
        assert read_tile(path, pixel_type_of(expect)) is not None
    jpeg_grey = read_tile(_save(tmp_path / "g.jpeg", grey, quality=95), "grey8")
    assert jpeg_grey.shape == grey.shape and np.abs(jpeg_grey.astype(int) - grey).mean() < 2
    jpeg_rgb = _save(tmp_path / "c.jpeg", texture, quality=95)
    np.testing.assert_array_equal(read_tile(jpeg_rgb, "rgb8"), read_rgb(jpeg_rgb))  # the same fast decode


def test_read_tile_refuses_other_types_and_damage_in_one_line(tmp_path, texture, sixteen):
    import tifffile

    png16 = _save(tmp_path / "g16.png", sixteen)
    tifffile.imwrite(tmp_path / "float.tif", sixteen.astype(np.float32))
    tif = tmp_path / "g16.tif"
    tifffile.imwrite(tif, sixteen, photometric="minisblack", compression="zlib")
    truncated_tif = tmp_path / "cut.tif"
    truncated_tif.write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])
    truncated_png = tmp_path / "cut.png"
    truncated_png.write_bytes(png16.read_bytes()[: png16.stat().st_size // 2])
    cases = [(png16, "grey8", "holds grey16 pixels, the other tiles grey8"),
             (tmp_path / "float.tif", None, "only 8-bit RGB, 8-bit grey and 16-bit grey"),
             (truncated_tif, None, "cannot decode image"), (truncated_png, None, "cannot decode image"),
             (tmp_path / "missing.png", None, "file not found")]
    for path, pixel_type, problem in cases:
        with pytest.raises(OfmTilingError) as info:
            read_tile(path, pixel_type)
        message = str(info.value)
        assert path.name in message and problem in message and "\n" not in message


def test_tile_luminance_keeps_sixteen_bit_precision(tmp_path, texture, sixteen):
    from ofm_tiling.pixels import block_mean

    png16 = _save(tmp_path / "g16.png", sixteen)
    full = tile_luminance(png16)
    assert full.dtype == np.float32 and full.max() > 60000  # Pillow's "L" would clip at 255
    np.testing.assert_array_equal(full, sixteen.astype(np.float32))
    quarter = tile_luminance(png16, 4)
    assert quarter.shape == (61, 82)
    np.testing.assert_allclose(quarter, block_mean(sixteen, 4), rtol=1e-6)
    rgb_png = _save(tmp_path / "c.png", texture)
    np.testing.assert_allclose(tile_luminance(rgb_png), luma(texture), atol=1e-3)
    jpeg = _save(tmp_path / "c.jpeg", texture, quality=90)
    for scale in (1, 4):  # JPEGs keep the DCT-scaled grey decode
        np.testing.assert_array_equal(tile_luminance(jpeg, scale), read_luminance(jpeg, scale))
