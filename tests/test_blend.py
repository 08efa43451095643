"""Cell blending: the 8-bit paste is Pillow's masked paste, byte for byte, for every input."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ofm_tiling.blend import Piece, _paste, feather_cell
from ofm_tiling.seams import seam_ramp


def test_paste_equals_pillow_masked_paste_for_every_under_over_and_mask_value():
    # All 256**3 (under, over, mask) triples, as one grey image of 65536 x 256 pixels.
    under, over, mask = (a.astype(np.uint8) for a in np.meshgrid(*[np.arange(256)] * 3, indexing="ij"))
    under, over, mask = (a.reshape(256 * 256, 256) for a in (under, over, mask))
    ours = _paste([over, under], [mask.astype(np.uint16)])
    pillow = Image.fromarray(under)
    pillow.paste(Image.fromarray(over), (0, 0), Image.fromarray(mask))
    assert np.array_equal(ours, np.asarray(pillow))


def test_paste_of_three_rgb_parts_equals_pillow_pasting_them_in_turn():
    rng = np.random.default_rng(3)
    parts = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8) for _ in range(3)]
    masks = [rng.integers(0, 256, (5, 7), dtype=np.uint8) for _ in range(2)]
    pillow = Image.fromarray(parts[2])
    for src, m in ((parts[1], masks[1]), (parts[0], masks[0])):
        pillow.paste(Image.fromarray(src), (0, 0), Image.fromarray(m))
    flat = [np.repeat(m, 3, axis=1).astype(np.uint16) for m in masks]  # one value per channel
    assert np.array_equal(_paste(parts, flat), np.asarray(pillow))


def test_feather_cell_is_the_same_with_a_shared_mask_cache_band_after_band():
    # Two tiles side by side overlapping by 40 columns; the seam's masks are cached in band 1
    # and reused in band 2 (same columns, other rows), which must equal a fresh computation.
    rng = np.random.default_rng(5)
    a, b = (rng.integers(0, 256, (30, 100, 3), dtype=np.uint8) for _ in range(2))
    rows = seam_ramp(30, None, None)
    ra, rb = (rows, seam_ramp(100, None, 40.0, width=16)), (rows, seam_ramp(100, 40.0, None, width=16))
    cache: dict = {}
    for band in (slice(0, 10), slice(10, 30)):
        cover = [Piece(a, band, slice(60, 100), ra), Piece(b, band, slice(0, 40), rb)]
        shared, fresh = (np.zeros((band.stop - band.start, 40, 3), np.uint8) for _ in range(2))
        feather_cell(shared, cover, cache)
        feather_cell(fresh, cover)
        assert cache and np.array_equal(shared, fresh)
        assert np.array_equal(shared[:, :4], a[band, 60:64]) and np.array_equal(shared[:, -4:], b[band, 36:40])
