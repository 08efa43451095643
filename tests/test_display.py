"""Display scaling: one range per mosaic, identity for 8 bits, a linear stretch for 16 bits."""
from __future__ import annotations

import numpy as np
import pytest

from ofm_tiling.display import DisplayRange, display_range, sample_step, to_display


def test_eight_bit_is_shown_as_it_is():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    window = display_range(image)
    assert window == DisplayRange(0, 255) and window.is_identity
    assert to_display(image, window) is image  # no copy on the 8-bit path
    rgb = np.zeros((4, 4, 3), np.uint8)
    assert to_display(rgb, display_range(rgb)) is rgb


def test_sixteen_bit_range_is_the_percentiles_and_the_stretch_is_linear():
    rng = np.random.default_rng(0)
    values = rng.integers(1000, 51001, 200_000).astype(np.uint16)
    window = display_range(values.reshape(400, 500))
    lo, hi = np.percentile(values, (0.1, 99.9))
    assert window.lo == int(np.floor(lo)) and window.hi == int(np.ceil(hi))
    assert window.to_json() == [window.lo, window.hi]
    probe = np.array([[0, window.lo, (window.lo + window.hi) // 2, window.hi, 65535]], np.uint16)
    shown = to_display(probe, window)
    assert shown.dtype == np.uint8
    expect = np.clip(np.floor((probe.astype(float) - window.lo) * 255 / (window.hi - window.lo) + 0.5), 0, 255)
    np.testing.assert_array_equal(shown, expect)
    assert shown[0, 0] == 0 and shown[0, 1] == 0 and shown[0, 3] == 255 and shown[0, 4] == 255


def test_flat_images_and_bad_types():
    assert display_range(np.full((8, 8), 700, np.uint16)) == DisplayRange(700, 701)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        display_range(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        to_display(np.zeros((4, 4), np.int32), DisplayRange(0, 10))


def test_sample_step_keeps_the_sample_near_a_megapixel():
    assert sample_step((512, 512)) == 1
    assert sample_step((4000, 4000)) == 4
    h, w = 30000, 20000
    step = sample_step((h, w))
    assert (-(-h // step)) * (-(-w // step)) <= 1 << 20 < (-(-h // (step - 1))) * (-(-w // (step - 1)))
