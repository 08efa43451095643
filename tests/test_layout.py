import numpy as np

from ofm_tiling.layout import grid_positions, group_rows, scan_order, stage_to_pixels


def test_stage_to_pixels_inverts_the_mapping_and_scales_with_width():
    csm = np.array([[0.1, -2.0], [2.0, 0.1]])  # stage_xy = [d_row, d_col] @ csm at 832 px
    true_xy = np.array([[0, 0], [400, 0], [0, 300], [400, 300]], float)  # at 3328 px = 4x calibration
    row_col_cal = true_xy[:, ::-1] / 4
    stage = row_col_cal @ csm
    xy = stage_to_pixels(stage, csm, csm_width=832, image_width=3328)
    np.testing.assert_allclose(xy, true_xy - true_xy.min(0), atol=1e-9)


def test_grid_positions_raster_and_snake():
    p = grid_positions(5, cols=3, rows=2, tile_shape=(100, 200), overlap=0.25)
    np.testing.assert_allclose(p, [[0, 0], [150, 0], [300, 0], [0, 75], [150, 75]])
    s = grid_positions(4, cols=3, rows=2, tile_shape=(100, 200), overlap=0.25, snake=True)
    np.testing.assert_allclose(s[3], [300, 75])


def test_scan_order_tolerates_stage_error():
    rng = np.random.default_rng(0)
    truth = [(c * 300, r * 200) for r in range(4) for c in range(5)]
    xy = np.array(truth, float) + rng.uniform(-40, 40, (20, 2))
    shuffled = rng.permutation(20)
    order = scan_order(xy[shuffled], (240, 320))
    assert list(shuffled[order]) == list(range(20))


def test_group_rows_finds_grid_lines_despite_stage_error():
    rng = np.random.default_rng(1)
    rows = np.repeat(np.arange(4), 6)
    y = rows * 1700.0 + rng.uniform(-40, 40, rows.size)  # 2464 px tiles, 30 % overlap
    shuffled = rng.permutation(rows.size)
    groups = group_rows(y[shuffled], 2464)
    assert groups.labels.tolist() == rows[shuffled].tolist()
    np.testing.assert_allclose(groups.centres, [y[rows == k].mean() for k in range(4)])
    one = group_rows(np.array([3.0, -20.0, 15.0]), 2464)  # a single row
    assert one.labels.tolist() == [0, 0, 0] and one.centres.shape == (1,)
    assert group_rows(np.array([5.0]), 100).labels.tolist() == [0]
