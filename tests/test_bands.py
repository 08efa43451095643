"""Bands on their way into the pyramid: halving, regrouping into tile rows, spooling to disk."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ofm_tiling.bands import Spool, halve, rechunk


def halve_reference(a: np.ndarray) -> np.ndarray:
    """2x2 area mean, odd edges replicated (the mean over the pixels that exist)."""
    a = np.pad(a.astype(float), ((0, len(a) % 2), (0, a.shape[1] % 2), (0, 0)), mode="edge")
    return np.floor(a.reshape(len(a) // 2, 2, a.shape[1] // 2, 2, a.shape[2]).mean(axis=(1, 3)) + 0.5).astype(np.uint8)


def test_halve_is_the_rounded_area_mean():
    rng = np.random.default_rng(0)
    for shape in ((6, 8, 3), (7, 9, 3), (1, 1, 3), (5, 20000, 3)):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_array_equal(halve(a), halve_reference(a))
        with ThreadPoolExecutor(2) as pool:
            for pieces in (2, 3, 7):  # pieces meet on even columns, whatever the width
                np.testing.assert_array_equal(halve(a, pool, pieces), halve_reference(a))


def test_halve_of_sixteen_bit_grey_is_the_rounded_area_mean():
    from ofm_tiling.pixels import halve_u16

    rng = np.random.default_rng(1)
    for shape in ((6, 8), (7, 9), (1, 1), (5, 2001)):
        a = rng.integers(0, 65536, shape, dtype=np.uint16)
        b = np.pad(a.astype(float), ((0, shape[0] % 2), (0, shape[1] % 2)), mode="edge")
        expect = np.floor(b.reshape(len(b) // 2, 2, b.shape[1] // 2, 2).mean(axis=(1, 3)) + 0.5)
        np.testing.assert_array_equal(halve_u16(a), expect)  # four 65535s do not overflow
        with ThreadPoolExecutor(2) as pool:
            got = halve(a, pool, 3)
        assert got.dtype == np.uint16
        np.testing.assert_array_equal(got, expect)
    grey8 = rng.integers(0, 256, (7, 9), dtype=np.uint8)  # grey 8-bit: halve_u8 without a channel axis
    np.testing.assert_array_equal(halve(grey8), halve_reference(grey8[..., None])[..., 0])


def test_rechunk_regroups_bands_into_tile_rows():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (70, 9), dtype=np.uint8)
    bands = [(0, grey[:7]), (7, grey[7:40]), (40, grey[40:])]
    blocks = list(rechunk(iter(bands), grey.shape, 16, sample=()))
    assert [(y0, len(b)) for y0, b in blocks] == [(0, 16), (16, 16), (32, 16), (48, 16), (64, 6)]
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), grey)
    whole = [(0, grey[:16]), (16, grey[16:32])]  # already tile rows: passed on without a copy
    assert all(b is w for (_, b), (_, w) in zip(rechunk(iter(whole), (32, 9), 16, sample=()), whole))
    with pytest.raises(ValueError, match="expected uint8 \\(rows, 9\\), got uint8 \\(7, 9, 3\\)"):
        list(rechunk(iter([(0, np.zeros((7, 9, 3), np.uint8))]), (7, 9), 16, sample=()))


def test_spool_reads_back_what_was_written(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (37, 11, 3), dtype=np.uint8)
    spool = Spool(str(tmp_path), "m.ome.tif", "level1", (37, 11))
    assert spool.path.startswith(str(tmp_path / ".m.ome.tif.")) and spool.path.endswith(".level1.tmp")
    for y0 in (20, 0):  # written out of order
        spool.write(y0, image[y0 : y0 + 20])
    np.testing.assert_array_equal(spool.read(5, 30), image[5:30])
    np.testing.assert_array_equal(np.concatenate([b for _, b, _ in spool.blocks(16)]), image)
    spool.remove()
    assert list(tmp_path.iterdir()) == []
