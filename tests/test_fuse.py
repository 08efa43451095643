"""Fusion: tiles cut from a known image at known positions must give that image back."""
from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
import tifffile
from conftest import he_sample, psnr, real_fiji

from ofm_tiling.backend import Mosaic
from ofm_tiling.fuse import fuse_bands, fuse_mosaic, mosaic_shape
from ofm_tiling.seams import SEAM_WIDTH, tile_ramps

TILE = (400, 520)  # (height, width)


def _he_image() -> np.ndarray:
    """The real H&E sample, 2000 x 1600 and mostly tissue (also used by test_writers)."""
    return he_sample()[900:2900, 500:2100]


_psnr = psnr  # test_writers imports it from here; it should import conftest's psnr itself


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return _he_image()


def _grid(rows: int, cols: int, step=(440, 330), jitter=12, seed=0) -> np.ndarray:
    """Integer (x, y) positions of a snake-free grid with stage-like jitter, all >= 0."""
    rng = np.random.default_rng(seed)
    xy = np.array([(c * step[0], r * step[1]) for r in range(rows) for c in range(cols)], float)
    return xy + rng.integers(0, jitter + 1, xy.shape)


def _cut(image: np.ndarray, positions: np.ndarray, shape=TILE) -> list[np.ndarray]:
    th, tw = shape
    return [image[int(y) : int(y) + th, int(x) : int(x) + tw].copy() for x, y in positions]


def _fuse(tiles, positions, shape=TILE, **kw) -> np.ndarray:
    bands = list(fuse_bands(lambda i: tiles[i], positions, shape, **kw))
    assert [y0 for y0, _ in bands] == list(np.cumsum([0] + [len(b) for _, b in bands[:-1]]))
    return np.concatenate([b for _, b in bands])


def _coverage(positions, image_shape, shape=TILE) -> np.ndarray:
    count = np.zeros(image_shape, int)
    for x, y in positions.astype(int):
        count[y : y + shape[0], x : x + shape[1]] += 1
    return count


def test_mosaic_shape_shifts_and_rounds():
    pos = np.array([[-10.4, 5.0], [90.6, -20.2], [40.0, 81.7]])
    # x: -10 .. 101 (shift 10.4 -> 0 .. 101), y: -20.2 .. 81.7 -> 0 .. 102
    assert mosaic_shape(pos, (50, 60)) == (102 + 50, 101 + 60)
    with pytest.raises(ValueError):
        mosaic_shape(np.zeros((0, 2)), (5, 5))


@pytest.mark.parametrize("blend", ["feather", "none"])
def test_exact_tiles_give_the_source_back(source, blend):
    pos = _grid(3, 3)
    fused = _fuse(_cut(source, pos), pos, blend=blend)
    h, w = mosaic_shape(pos, TILE)
    x0, y0 = pos.min(0).astype(int)
    assert fused.shape == (h, w, 3)
    covered = _coverage(pos - pos.min(0), (h, w)) > 0
    assert 0.97 < covered.mean() < 1  # jitter leaves a few uncovered corners: black
    # Identical pixels in every overlap: any weighted mean must return them unchanged.
    np.testing.assert_array_equal(fused[covered], source[y0 : y0 + h, x0 : x0 + w][covered])
    assert (fused[~covered] == 0).all()


def test_noisy_tiles_psnr_and_single_cover_exact(source):
    pos = _grid(3, 3, seed=3)
    rng = np.random.default_rng(7)
    tiles = [np.clip(t + rng.normal(0, 1.5, t.shape), 0, 255).round().astype(np.uint8) for t in _cut(source, pos)]
    fused = _fuse(tiles, pos, blend="feather")
    x0, y0 = pos.min(0).astype(int)
    truth = source[y0 : y0 + fused.shape[0], x0 : x0 + fused.shape[1]]
    rel = pos - pos.min(0)
    count = _coverage(rel, fused.shape[:2])
    quality = psnr(fused[count > 0], truth[count > 0])
    print(f"feather PSNR vs source (tiles with sigma=1.5 noise): {quality:.1f} dB")
    assert quality > 40
    # Where one tile alone covers a pixel, it is that tile's pixel, bit for bit.
    for tile, (x, y) in zip(tiles, rel.astype(int)):
        alone = count[y : y + TILE[0], x : x + TILE[1]] == 1
        np.testing.assert_array_equal(fused[y : y + TILE[0], x : x + TILE[1]][alone], tile[alone])
    # Overlaps average independent noise, so they are closer to the truth than single tiles.
    err = np.abs(fused.astype(float) - truth).mean(axis=2)
    assert err[count >= 2].mean() < err[count == 1].mean()


def _exact_feather(tiles, positions, shape=TILE) -> tuple[np.ndarray, np.ndarray]:
    """The weighted mean fuse_bands approximates, in float64: same ramps, no rounding."""
    off = (positions - positions.min(0)).astype(int)
    h, w = mosaic_shape(positions, shape)
    num, den = np.zeros((h, w, 3)), np.zeros((h, w))
    for tile, (x, y), (ry, rx) in zip(tiles, off, tile_ramps(off, shape)):
        weight = ry.w.astype(float)[:, None] * rx.w.astype(float)[None, :]
        num[y : y + shape[0], x : x + shape[1]] += weight[..., None] * tile
        den[y : y + shape[0], x : x + shape[1]] += weight
    covered = den > 0
    return num[covered] / den[covered][:, None], covered


# Overlaps of 80 x 70 px (narrower than the cross-fade: it spans them whole) and of 190 x 150 px
# (a 128 px cross-fade in the middle of each, the tiles' own pixels around it).
STEPS = [(440, 330), (330, 250)]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("band_height", [512, 37])
def test_feather_is_the_weighted_mean_to_within_rounding(source, band_height, step):
    """Overlaps (up to four tiles at the corners) are the exact feathered mean, up to the 8-bit
    rounding of each tile blended in: never more than about half a grey level per tile."""
    pos = _grid(3, 3, step=step, jitter=12, seed=5)
    rng = np.random.default_rng(5)
    tiles = [np.clip(t * g, 0, 255).astype(np.uint8) for t, g in zip(_cut(source, pos), rng.uniform(0.7, 1.3, 9))]
    exact, covered = _exact_feather(tiles, pos)
    fused = _fuse(tiles, pos, band_height=band_height, workers=2)[covered].astype(float)
    count = _coverage(pos - pos.min(0), covered.shape)[covered]
    assert (count == 4).sum() > 10_000  # corners where four tiles meet are exercised
    err = np.abs(fused - exact)
    print(f"deviation from the exact weighted mean: max {err.max():.2f}, mean {err.mean():.3f} grey levels")
    assert err.max() <= 2.0 and err.mean() < 0.1
    assert err[count == 1].max() < 1e-9  # single cover: the tile's own pixels (up to float division)
    assert err[count == 2].max() <= 1.0


def test_wide_overlaps_keep_the_tiles_own_pixels_outside_a_narrow_cross_fade(source):
    """With overlaps far wider than the cross-fade, a pixel is either one tile's own value or lies
    in the cross-fade zone, which is centred in its overlap and no wider than SEAM_WIDTH."""
    pos = _grid(1, 2, step=(220, 330), jitter=0)  # 300 px overlap
    tiles = [np.clip(t * g, 0, 255).astype(np.uint8) for t, g in zip(_cut(source, pos), (0.8, 1.2))]
    fused = _fuse(tiles, pos).astype(int)
    own_a = (fused[:, :TILE[1]] == tiles[0]).all(axis=(0, 2))
    own_b = np.zeros(fused.shape[1], bool)
    own_b[220:] = (fused[:, 220:] == tiles[1]).all(axis=(0, 2))
    mixed = np.flatnonzero(~(np.pad(own_a, (0, fused.shape[1] - TILE[1])) | own_b))
    print(f"cross-fade columns {mixed.min()}..{mixed.max()}")
    assert len(mixed) <= SEAM_WIDTH and mixed.min() > 220 and mixed.max() < TILE[1]
    assert abs((mixed.min() + mixed.max()) / 2 - (220 + TILE[1]) / 2) <= 1  # centred in the overlap


@pytest.mark.parametrize("step", STEPS)
def test_feathering_hides_a_gain_step(step):
    grey = np.full((1200, 1400, 3), 150, np.uint8)
    pos = _grid(2, 2, step=step, jitter=0)  # no uncovered corners: every step is a seam
    tiles = _cut(grey, pos)
    gains = [0.8, 1.2, 1.2, 0.8]  # checkerboard of exposures, as from auto-exposure drift
    tiles = [np.round(t * g).astype(np.uint8) for t, g in zip(tiles, gains)]
    steps = {}
    for blend in ("feather", "none"):
        m = _fuse(tiles, pos, blend=blend).astype(int)
        steps[blend] = max(np.abs(np.diff(m, axis=0)).max(), np.abs(np.diff(m, axis=1)).max())
    print(f"largest step between neighbouring pixels: {steps}")
    assert steps["none"] >= 55  # 150 * (1.2 - 0.8) = 60 at a hard seam
    assert steps["feather"] <= 3  # spread over the 70-80 px overlaps, or the 128 px cross-fade


def test_feathering_hides_gain_steps_in_tissue(source):
    pos = _grid(3, 3, seed=8)
    gains = [0.85, 1.15] * 5
    tiles = [np.clip(np.round(t * g), 0, 255).astype(np.uint8) for t, g in zip(_cut(source, pos), gains)]
    x0, y0 = pos.min(0).astype(int)
    contrast = {}
    for blend in ("feather", "none"):
        m = _fuse(tiles, pos, blend=blend).astype(float)
        s = source[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]].astype(float)
        ok = (s.min(axis=2) >= 40) & (s.max(axis=2) <= 215) & (_coverage(pos - pos.min(0), m.shape[:2]) > 0)
        gain = (m / s.clip(1)).mean(axis=2)  # the applied gain, free of the tissue's own texture
        steps = np.concatenate([np.abs(np.diff(gain, axis=1))[ok[:, 1:] & ok[:, :-1]],
                                np.abs(np.diff(gain, axis=0))[ok[1:] & ok[:-1]]])
        contrast[blend] = np.percentile(steps, 99.9)  # seams are ~0.3% of the pixels
    print(f"seam contrast (99.9th percentile of gain steps): {contrast}")
    assert contrast["none"] > 0.25  # the full 1.15 - 0.85 step
    # Near the mosaic's outer border, where jitter staggers tile edges by a few pixels, a
    # sliver covered by one tile still meets its neighbour's near-zero-weight edge: rare.
    assert contrast["feather"] < 0.03


@pytest.mark.parametrize("blend", ["feather", "none"])
def test_band_height_does_not_change_the_result(source, blend):
    pos = _grid(3, 2, seed=11)
    tiles = _cut(source, pos)
    rng = np.random.default_rng(0)
    tiles = [np.clip(t * g, 0, 255).astype(np.uint8) for t, g in zip(tiles, rng.uniform(0.8, 1.2, len(tiles)))]
    results = [_fuse(tiles, pos, blend=blend, band_height=bh) for bh in (1, 37, 512, 10_000)]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_progress_counts_rows():
    calls = []
    pos = np.array([[0, 0], [0, 90]])
    tiles = [np.zeros((100, 30, 3), np.uint8)] * 2
    list(fuse_bands(lambda i: tiles[i], pos, (100, 30), band_height=64, progress=lambda *a: calls.append(a)))
    assert calls == [(64, 190), (128, 190), (190, 190)]


def test_uncovered_pixels_get_the_fill_value():
    tiles = [np.full((10, 10, 3), 100, np.uint8)] * 2
    pos = np.array([[0, 0], [15, 12]])
    for fill in (0, 255):
        m = _fuse(tiles, pos, (10, 10), fill=fill)
        assert m.shape == (22, 25, 3)
        assert (m[:10, :10] == 100).all() and (m[12:, 15:] == 100).all()
        assert (m[:10, 12:] == fill).all() and (m[12:, :15] == fill).all()


def test_each_tile_decoded_once_and_released_as_bands_pass():
    """Streaming: a tall scan keeps only ~two rows of decoded tiles alive, whatever its height."""
    rows, cols, th, tw = 30, 2, 64, 80
    pos = np.array([(c * 70, r * 50) for r in range(rows) for c in range(cols)], float)
    calls = [0] * len(pos)
    alive = set()
    lock = threading.Lock()

    def read_tile(i):
        with lock:
            calls[i] += 1
            alive.add(i)
        tile = np.full((th, tw, 3), i % 256, np.uint8)
        weakref.finalize(tile, lambda: alive.discard(i))
        return tile

    most = 0
    for y0, band in fuse_bands(read_tile, pos, (th, tw), band_height=16, workers=2):
        gc.collect()
        most = max(most, len(alive))
        # everything still alive is needed by this band or by the next row of tiles
        assert all(pos[i, 1] + th > y0 and pos[i, 1] < y0 + len(band) + th for i in alive)
    assert calls == [1] * len(pos)
    assert most <= 2 * cols  # the most one band needs (two rows where rows overlap)
    gc.collect()
    assert not alive


def test_bad_tiles_and_errors_propagate():
    pos = np.array([[0, 0], [50, 0]])
    with pytest.raises(ValueError, match="tile 1"):
        list(fuse_bands(lambda i: np.zeros((64, 64, 3) if i == 0 else (64, 63, 3), np.uint8), pos, (64, 64)))

    def failing(i):
        raise OSError(f"cannot decode tile {i}")

    with pytest.raises(OSError, match="cannot decode"):
        list(fuse_bands(failing, pos, (64, 64)))
    with pytest.raises(ValueError, match="blend"):
        fuse_bands(failing, pos, (64, 64), blend="median")


def test_fuse_mosaic_from_files_equals_fuse_bands(tmp_path, source):
    """Tiles given as files are decoded by read_rgb: the same mosaic as from a reader function."""
    from PIL import Image

    from ofm_tiling.imageio import read_rgb

    pos = _grid(2, 2, seed=4) + 0.3  # fractional positions, rounded the same way by both
    paths = []
    for k, tile in enumerate(_cut(source, pos.astype(int))):
        paths.append(tmp_path / f"{k:02d}.jpeg")
        Image.fromarray(tile).save(paths[-1], quality=90)
    mosaic = fuse_mosaic(paths, pos, TILE, workers=2)
    assert isinstance(mosaic, Mosaic) and mosaic.shape == mosaic_shape(pos, TILE)
    fused = np.concatenate([band for _, band in mosaic.bands])
    expected = _fuse([read_rgb(p) for p in paths], pos)
    np.testing.assert_array_equal(fused, expected)
    with pytest.raises(ValueError, match="3 tiles but 4 positions"):
        fuse_mosaic(paths[:3], pos, TILE)
    with pytest.raises(TypeError, match="quality"):
        fuse_mosaic(paths, pos, TILE, quality=5)


@pytest.mark.parametrize("offset", [0.0, 0.5, -0.5, 0.49, -1234.5])
def test_reported_shape_is_the_shape_written(tmp_path, offset):
    """Issue 11 item 5: the size reported must be the size of the file written. `Mosaic.shape`
    is what the writer is given and what the command prints; the OME-TIFF read back agrees."""
    from ofm_tiling.pyramid import write_ome_tiff

    tiles = [np.full((30, 40, 3), 60 * k + 20, np.uint8) for k in range(3)]
    pos = np.array([[0.0, 0.0], [33.5, 2.5], [10.49, 24.51]]) + offset  # .5 rounds to even
    mosaic = fuse_mosaic(lambda i: tiles[i], pos, (30, 40), workers=1)
    assert mosaic.shape == mosaic_shape(pos, (30, 40))
    path = tmp_path / "m.ome.tif"
    write_ome_tiff(path, mosaic.shape, mosaic.bands, compression="none", workers=1)
    written = tifffile.imread(path)
    assert written.shape == (*mosaic.shape, 3)
    # every tile lies whole inside the written image (fill is 0, tiles are >= 20)
    for x, y in np.rint(pos - pos.min(0)).astype(int):
        assert (written[y : y + 30, x : x + 40] >= 20).all()
    assert written[-1, :].any() and written[:, -1].any()  # no empty last row or column


def test_real_fiji_positions_give_the_size_written(tmp_path):
    """Issue 11 item 5 on the real run (../shared/reference/real-fiji/normal): Fiji's own fused
    image was 2006 x 1176 while the command printed `mosaic_shape`, 2005 x 1175. Fused by us from
    Fiji's registered positions, the file written has the size `fuse_mosaic` reports."""
    import re

    from ofm_tiling.pyramid import write_ome_tiff

    folder = real_fiji("normal")
    text = (folder / "fiji-TileConfiguration.registered.txt").read_text()
    rows = re.findall(r"^(\S+); ; \(([-\d.eE]+), ([-\d.eE]+)\)", text, re.M)
    positions = np.array([(float(x), float(y)) for _, x, y in rows])
    mosaic = fuse_mosaic([folder / "use" / name for name, _, _ in rows], positions, (480, 640), workers=2)
    assert mosaic.shape == mosaic_shape(positions, (480, 640)) == (1175, 2005)
    write_ome_tiff(tmp_path / "m.ome.tif", mosaic.shape, mosaic.bands, workers=2)
    written = tifffile.imread(tmp_path / "m.ome.tif")
    assert written.shape == (1175, 2005, 3)
    assert (written[-1] > 0).any() and (written[:, -1] > 0).any()  # tissue up to the last row and column


@pytest.mark.parametrize("vignetting", [0.0, 0.25])
def test_narrow_cross_fade_is_as_close_to_the_truth_as_a_whole_overlap_one(source, vignetting):
    """The 128 px cross-fade and a cross-fade over whole overlaps are about as close to the truth:
    averaging over whole overlaps removes a little more noise (about 0.3 dB here), the narrow zone
    takes more pixels from tile centres, away from vignetting."""
    pos = _grid(3, 3, step=(300, 220), jitter=12, seed=3)  # overlaps about 220 x 180 px
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[: TILE[0], : TILE[1]]
    r2 = ((yy - TILE[0] / 2) ** 2 + (xx - TILE[1] / 2) ** 2) / ((TILE[0] / 2) ** 2 + (TILE[1] / 2) ** 2)
    gain = (1 - vignetting * r2)[..., None]
    tiles = [np.clip(t * gain + rng.normal(0, 3, t.shape), 0, 255).astype(np.uint8) for t in _cut(source, pos)]
    x0, y0 = pos.min(0).astype(int)
    quality = {}
    for width in (None, np.inf):
        m = _fuse(tiles, pos, feather_width=width)
        covered = _coverage(pos - pos.min(0), m.shape[:2]) > 0
        quality[width] = psnr(m[covered], source[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]][covered])
    print(f"PSNR against the truth, 128 px cross-fade vs whole overlaps: {quality}")
    assert quality[None] > quality[np.inf] - 0.5


# --- greyscale and 16-bit tiles ---------------------------------------------------------------------

def _grey_truth(folder, truth, scale: int) -> np.ndarray:
    """The generator's canvas as the grey tiles hold it (luma, x 257 for 16 bits), in mosaic frame."""
    from PIL import Image

    from ofm_tiling.pixels import luma

    with Image.open(folder / truth.truth_png) as im:
        canvas = luma(np.asarray(im.convert("RGB"))) * scale
    x0, y0 = truth.true_xy_array().min(axis=0).astype(int)
    return canvas[y0:, x0:]


@pytest.mark.parametrize(("pixel_type", "tile_format"),
                         [("grey8", "jpeg"), ("grey8", "png"), ("grey16", "png"), ("grey16", "tiff")])
def test_grey_tiles_at_their_true_positions_fuse_to_the_truth(scans, pixel_type, tile_format):
    from ofm_tiling.imageio import read_tile

    folder, truth = scans(f"fuse-{pixel_type}-{tile_format}", kind="tileconfig", grid=(3, 2), subpixel=False,
                          pixel_type=pixel_type, tile_format=tile_format, source="procedural")
    paths = [folder / p.central_file for p in truth.positions]
    xy = truth.true_xy_array()
    mosaic = fuse_mosaic(paths, xy, truth.tile_shape, pixel_type=pixel_type, band_height=100)
    image = np.concatenate([rows for _, rows in mosaic.bands])
    dtype, peak = (np.uint16, 65535.0) if pixel_type == "grey16" else (np.uint8, 255.0)
    assert image.shape == mosaic.shape == mosaic_shape(xy, truth.tile_shape) and image.dtype == dtype
    expect = _grey_truth(folder, truth, 257 if pixel_type == "grey16" else 1)[: image.shape[0], : image.shape[1]]
    covered = _coverage(xy - xy.min(axis=0), image.shape, truth.tile_shape)
    # Sensor noise of 2 grey levels (x 257) and JPEG losses: ~40 dB; a tile one pixel off gives < 30 dB.
    assert psnr(image[covered > 0], expect[covered > 0], peak) > 36
    assert psnr(image[1:][covered[1:] > 0], expect[:-1][covered[1:] > 0], peak) < psnr(
        image[covered > 0], expect[covered > 0], peak) - 3
    # Where one tile covers, the mosaic holds that tile's own values exactly (16 bits kept).
    first = read_tile(paths[0], pixel_type)
    (x, y), (th, tw) = (xy[0] - xy.min(axis=0)).astype(int), truth.tile_shape
    alone = covered[y : y + th, x : x + tw] == 1
    np.testing.assert_array_equal(image[y : y + th, x : x + tw][alone], first[alone])


def test_sixteen_bit_overlaps_are_the_rounded_weighted_mean():
    rng = np.random.default_rng(2)
    tiles = [rng.integers(0, 65536, (60, 80), dtype=np.uint16) for _ in range(2)]
    positions = np.array([[0, 0], [50, 10]])
    image = _fuse(tiles, positions, (60, 80), pixel_type="grey16", feather_width=30)
    w = np.zeros((2, 70, 130), np.float64)
    v = np.zeros((2, 70, 130), np.float64)
    for k, ((x, y), tile, (ry, rx)) in enumerate(zip(positions, tiles, tile_ramps(positions, (60, 80), width=30))):
        w[k, y : y + 60, x : x + 80] = ry.w[:, None] * rx.w[None, :]
        v[k, y : y + 60, x : x + 80] = tile
    both = (w > 0).all(axis=0)
    exact = (w * v).sum(axis=0)[both] / w.sum(axis=0)[both]
    assert image.dtype == np.uint16
    assert np.abs(image[both] - exact).max() <= 0.51  # rounded once, float32 weights


def test_grey_tiles_of_the_wrong_type_are_refused():
    tiles = [np.zeros((40, 50), np.uint8)] * 2
    with pytest.raises(ValueError, match="expected uint16"):
        _fuse(tiles, np.array([[0, 0], [30, 0]]), (40, 50), pixel_type="grey16")
    with pytest.raises(ValueError, match="fill must be in 0..255"):
        _fuse(tiles, np.array([[0, 0], [30, 0]]), (40, 50), pixel_type="grey8", fill=300)
    nearest = _fuse([np.full((40, 50), 1, np.uint8), np.full((40, 50), 2, np.uint8)], np.array([[0, 0], [30, 5]]),
                    (40, 50), pixel_type="grey8", fill=7, blend="none")
    assert nearest.shape == (45, 80) and nearest[44, 0] == 7 and nearest[0, 79] == 7  # uncovered corners
    assert nearest[20, 20] == 1 and nearest[20, 60] == 2 and set(np.unique(nearest)) == {1, 2, 7}
