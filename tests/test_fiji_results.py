"""Reading Fiji's results (ofm_tiling.fiji.results): the REAL logs and registered files recorded from
Fiji's Grid/Collection stitching (../shared/reference/real-fiji/), Java number forms, fused channels.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from fiji_standin.harness import real_fiji

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.fiji.results import merge_channels, read_log_pairs, read_registered


def test_real_log_gives_every_pair_fiji_compared():
    folder = real_fiji("blank-glass")
    pairs = read_log_pairs((folder / "fiji-console.log").read_text())
    assert len(pairs) == 29  # the 29 "A[1] <- B[1]" lines of the recorded run
    by_pair = {(p.a, p.b): p for p in pairs}
    glass = by_pair[("02.jpeg", "05.jpeg")]
    assert glass.shift == (-447.154, 326.9699) and glass.correlation == pytest.approx(0.61850107)
    assert by_pair[("00.jpeg", "01.jpeg")].shift == (414.0758, -5.9450483)
    assert by_pair[("02.jpeg", "03.jpeg")].correlation == 0.0
    assert sum(p.correlation >= 0.30 for p in pairs) == 9  # 8 tissue links and the glass one


def test_real_log_shift_is_the_registered_difference():
    # "A <- B: (dx, dy)" is B's position minus A's: on the normal scan Fiji's own positions say so.
    folder = real_fiji("normal")
    pairs = read_log_pairs((folder / "fiji-console.log").read_text())
    registered = read_registered(folder / "fiji-TileConfiguration.registered.txt")
    assert len(pairs) == 29 and all(p.correlation > 0.96 for p in pairs)
    for p in pairs:
        implied = np.subtract(registered[p.b], registered[p.a])
        assert np.abs(implied - p.shift).max() < 1.0, (p.a, p.b)


def test_real_registered_file_reads_java_numbers():
    registered = read_registered(real_fiji("blank-glass") / "fiji-TileConfiguration.registered.txt")
    assert len(registered) == 12
    assert registered["00.jpeg"] == registered["02.jpeg"] == registered["06.jpeg"] == (0.0, 0.0)
    assert registered["05.jpeg"] == (-447.15399169921875, 326.96990966796875)


def test_read_registered_takes_java_numbers_and_leaves_out_unknown_positions(tmp_path):
    registered = tmp_path / "TileConfiguration.registered.txt"
    registered.write_text(textwrap.dedent("""\
        # Define the number of dimensions we are working on
        dim = 2

        # Define the image coordinates
        00.jpeg; ; (1.0E-4, -0.0)
        01.jpeg; ; (703.25, -1.5E0)
        03.jpeg; ; (NaN, 498.0)
        04.jpeg; ; (1.4015E3, 501.0)
        """))
    layout = read_registered(registered)
    assert list(layout) == ["00.jpeg", "01.jpeg", "04.jpeg"]
    assert layout["00.jpeg"] == (1.0e-4, 0.0) and layout["04.jpeg"] == (1401.5, 501.0)


def test_log_lines_of_other_kinds_are_ignored():
    text = "Loading: SCAN/use/00.jpeg ... \n0: 4.65E-14 4.65E-14\n" \
           "a[1] <- b[1]: (1.0E1, -2) correlation (R)=NaN (3 ms)\n"
    pairs = read_log_pairs(text)
    assert [(p.a, p.b, p.shift) for p in pairs] == [("a", "b", (10.0, -2.0))] and np.isnan(pairs[0].correlation)


def _channel_file(path: Path, data: np.ndarray, writer: str) -> None:
    if writer == "tifffile":
        import tifffile

        tifffile.imwrite(path, data, photometric="minisblack")
    else:
        from PIL import Image

        Image.fromarray(data).save(path, format="TIFF")


def test_merge_channels_reads_fijis_extensionless_channels(tmp_path):
    rng = np.random.default_rng(1)
    planes = [rng.integers(0, 256, (1100, 37), dtype=np.uint8) for _ in range(3)]
    for k, (plane, writer) in enumerate(zip(planes, ["tifffile", "pillow", "tifffile"]), start=1):
        _channel_file(tmp_path / f"img_t1_z1_c{k}", plane, writer)
    shape, bands = merge_channels(tmp_path)
    assert shape == (1100, 37)
    bands = list(bands)
    assert [y0 for y0, _ in bands] == [0, 512, 1024]
    assert all(band.dtype == np.uint8 and band.shape[1:] == (37, 3) for _, band in bands)
    assert np.array_equal(np.concatenate([b for _, b in bands]), np.stack(planes, axis=-1))


def test_merge_channels_repeats_a_single_grey_channel(tmp_path):
    plane = np.arange(12, dtype=np.uint8).reshape(3, 4)
    _channel_file(tmp_path / "img_t1_z1_c1", plane, "pillow")
    shape, bands = merge_channels(tmp_path, band_height=2)
    image = np.concatenate([b for _, b in bands])
    assert shape == (3, 4) and np.array_equal(image, np.repeat(plane[..., None], 3, axis=2))


def test_merge_channels_errors_are_clear(tmp_path):
    with pytest.raises(OfmTilingError, match="no fused image"):
        merge_channels(tmp_path)
    _channel_file(tmp_path / "img_t1_z1_c1", np.zeros((4, 4), np.uint16), "tifffile")
    with pytest.raises(OfmTilingError, match="8-bit"):
        merge_channels(tmp_path)
    _channel_file(tmp_path / "img_t1_z1_c1", np.zeros((4, 4), np.uint8), "tifffile")
    _channel_file(tmp_path / "img_t1_z1_c2", np.zeros((4, 5), np.uint8), "tifffile")
    _channel_file(tmp_path / "img_t1_z1_c3", np.zeros((4, 5), np.uint8), "tifffile")
    with pytest.raises(OfmTilingError, match="channel is 5x4 px"):
        merge_channels(tmp_path)
    (tmp_path / "img_t1_z1_c3").write_bytes(b"not a tiff")
    with pytest.raises(OfmTilingError, match="cannot read"):
        merge_channels(tmp_path)
