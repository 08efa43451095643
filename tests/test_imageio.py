"""Tile decoding: libjpeg-turbo straight to numpy, Pillow for everything it declines."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.imageio import read_gray, read_luminance, read_rgb


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
