"""The JPEG preview: size rules, atomic writing, and the row-by-row resize from a pyramid level."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from ofm_tiling.preview import preview_shape, write_preview, write_preview_from_rows


class _Rows:
    def __init__(self, image: np.ndarray):
        self.image, self.shape = image, image.shape[:2]

    def read(self, y0: int, y1: int) -> np.ndarray:
        return self.image[y0:y1]


def test_preview_size_rules():
    assert preview_shape((1000, 4000), 2000) == (500, 2000)
    assert preview_shape((100, 300), 2000) == (100, 300)  # never enlarged
    assert preview_shape((200000, 1000), 2000)[0] <= 65500  # JPEG's height limit


def test_row_by_row_preview_matches_one_resize(tmp_path):
    rng = np.random.default_rng(5)
    from scipy import ndimage

    image = np.clip(ndimage.gaussian_filter(rng.normal(size=(900, 700, 3)), (3, 3, 0)) * 400 + 128, 0, 255)
    image = image.astype(np.uint8)
    write_preview_from_rows(tmp_path / "p.jpg", _Rows(image), (300, 233), quality=95, rows=64)
    write_preview(tmp_path / "q.jpg", image, width=233, quality=95)
    with Image.open(tmp_path / "p.jpg") as a, Image.open(tmp_path / "q.jpg") as b:
        assert a.size == b.size == (233, 300)
        diff = np.abs(np.asarray(a).astype(int) - np.asarray(b))
    assert diff.mean() < 1.5  # blocks join seamlessly: the same picture as one whole resize
    grey = np.ascontiguousarray(image[..., 0])
    write_preview_from_rows(tmp_path / "g.jpg", _Rows(grey), (300, 233))
    with Image.open(tmp_path / "g.jpg") as g:
        assert g.mode == "L" and g.size == (233, 300)
    assert sorted(os.listdir(tmp_path)) == ["g.jpg", "p.jpg", "q.jpg"]


def test_sixteen_bit_rows_are_scaled_for_display_before_the_resize(tmp_path):
    from ofm_tiling.display import DisplayRange, to_display

    rng = np.random.default_rng(6)
    from scipy import ndimage

    image = np.clip(ndimage.gaussian_filter(rng.normal(size=(600, 400)), 3) * 4e5 + 30000, 0, 65535).astype(np.uint16)
    window = DisplayRange(int(np.percentile(image, 1)), int(np.percentile(image, 99)))
    write_preview_from_rows(tmp_path / "p.jpg", _Rows(image), (150, 100), quality=95,
                            display=lambda rows: to_display(rows, window))
    write_preview(tmp_path / "q.jpg", np.repeat(to_display(image, window)[..., None], 3, axis=2), width=100, quality=95)
    with Image.open(tmp_path / "p.jpg") as a, Image.open(tmp_path / "q.jpg") as b:
        assert a.mode == "L" and a.size == b.size == (100, 150)
        diff = np.abs(np.asarray(a).astype(int) - np.asarray(b.convert("L")))
        spread = np.asarray(a).std()
    assert diff.mean() < 1.5 and spread > 20  # the display range's picture, not a black or white one


def test_whole_image_preview_of_grey_and_sixteen_bit(tmp_path):
    from ofm_tiling.display import DisplayRange, range_of, to_display

    ramp = np.tile(np.linspace(1000, 9000, 400).astype(np.uint16), (300, 1))
    write_preview(tmp_path / "g16.jpg", ramp, width=200, quality=95)
    window = range_of(ramp)
    assert window == DisplayRange(1000, 9000)  # 0.1 and 99.9 percentiles: each column holds 0.25 % of the values
    write_preview(tmp_path / "fixed.jpg", ramp, width=200, quality=95, display=DisplayRange(0, 65535))
    write_preview(tmp_path / "g8.jpg", to_display(ramp, window), width=200, quality=95)
    with Image.open(tmp_path / "g16.jpg") as a, Image.open(tmp_path / "g8.jpg") as b, \
            Image.open(tmp_path / "fixed.jpg") as c:
        assert a.mode == b.mode == "L" and a.size == (200, 150)
        assert np.abs(np.asarray(a).astype(int) - np.asarray(b)).max() <= 2  # scaled, then resized
        assert np.asarray(a)[:, 2].mean() < 5 and np.asarray(a)[:, -3].mean() > 250  # the full 0..255
        assert np.asarray(c).max() < 40  # the given range: 9000 of 65535 is dark
    with pytest.raises(ValueError, match="uint16 \\(H, W\\)"):
        write_preview(tmp_path / "bad.jpg", ramp.astype(np.int32))
