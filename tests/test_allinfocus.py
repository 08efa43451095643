"""All-in-focus fusion and plane alignment, on generated z-stacks with known truth (tests/stacks.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from stacks import (
    GLASS,
    PLANES,
    TISSUE,
    load_slide,
    make_stack,
    psnr,
    truth_from,
)

from ofm_tiling.allinfocus import align_planes, edf_from_paths, fuse_stack
from ofm_tiling.errors import OfmTilingError

slide = pytest.fixture(scope="module")(load_slide)

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
    from ofm_tiling.allinfocus import _upsample
    x = np.random.default_rng(0).random((2, 7, 5)).astype(np.float32)
    for axis in (-2, -1):
        for factor in (2, 4):
            n = x.shape[axis]
            pos = (np.arange(factor * n - 1) + 0.5) / factor - 0.5  # centres of the 2x2 / 4x4 boxes
            expected = np.apply_along_axis(lambda v, pos=pos, n=n: np.interp(pos, np.arange(n), v), axis, x)
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
