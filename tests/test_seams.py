"""Seams: each tile's feather ramps, from the overlaps on each of its sides."""
from __future__ import annotations

import numpy as np
import pytest

from ofm_tiling.seams import SEAM_WIDTH, seam_ramp, side_overlaps, tile_ramps

TILE = (400, 520)  # (height, width)


def _grid(cols: int, rows: int, step=(440, 330)) -> np.ndarray:
    return np.array([(c * step[0], r * step[1]) for r in range(rows) for c in range(cols)])


def test_side_overlaps_of_a_regular_grid():
    s = side_overlaps(_grid(3, 2), TILE)  # overlaps 80 px across, 70 px down
    np.testing.assert_array_equal(s.left, [np.nan, 80, 80] * 2)
    np.testing.assert_array_equal(s.right, [80, 80, np.nan] * 2)
    np.testing.assert_array_equal(s.top, [np.nan] * 3 + [70] * 3)
    np.testing.assert_array_equal(s.bottom, [70] * 3 + [np.nan] * 3)


def test_side_overlaps_take_the_narrowest_neighbour_and_class_diagonals_by_their_thinner_side():
    off = np.array([[0, 0], [430, 10], [450, 390]])  # 1 right of 0; 2 below 1, diagonal to 0
    s = side_overlaps(off, TILE)
    assert s.right[0] == 90 and s.left[1] == 90  # 520 - 430 = 90 across
    # 0 and 2 share 70 x 10 px, thinner along y: a top/bottom pair (10 px), as are 1 and 2 (20 px).
    assert s.bottom[0] == 10 and s.bottom[1] == 20 and s.top[2] == 10
    assert np.isnan(s.top[0]) and np.isnan(s.left[0])


def test_seam_ramp_zones_and_cross_fade():
    n, overlap = 1000, 300
    r = seam_ramp(n, overlap, None)
    start = (overlap - SEAM_WIDTH) / 2
    assert r.zlo == int(np.ceil(start - 0.5)) and r.lo <= start + SEAM_WIDTH + 1 and r.hi == r.zhi == n
    fade = r.w[r.zlo : r.lo]
    assert (r.w[: r.zlo] == 0).all() and (r.w[r.lo :] == 1).all() and ((fade > 0) & (fade < 1)).all()
    # Two neighbours' ramps over their shared 300 px sum to 1: a seamless cross-fade.
    left, right = seam_ramp(n, None, overlap), seam_ramp(n, overlap, None)
    np.testing.assert_allclose(left.w[n - overlap :] + right.w[:overlap], 1, atol=1e-6)


@pytest.mark.parametrize("overlap", [40.0, 90.5])
def test_overlaps_narrower_than_the_seam_fade_over_their_whole_width(overlap):
    r = seam_ramp(600, overlap, overlap)
    assert r.zlo == 0 and r.lo == int(np.ceil(overlap - 0.5)) and r.zhi == 600


def test_tiles_without_neighbours_keep_weight_one_to_their_edges():
    (ry, rx), = tile_ramps(np.array([[0, 0]]), TILE)
    assert (ry.w == 1).all() and (rx.w == 1).all()


def test_ramps_are_shared_between_tiles_with_the_same_sides():
    ramps = tile_ramps(_grid(4, 3), TILE)
    assert ramps[5][1] is ramps[6][1] and ramps[5][0] is ramps[6][0]  # two interior tiles
