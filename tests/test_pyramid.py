"""Pyramidal OME-TIFF writing: read back with tifffile, options checked first, atomic, bounded memory."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_bands import halve_reference
from test_fuse import _cut, _grid, _he_image, _psnr

from ofm_tiling import bands as bands_module
from ofm_tiling.display import display_range
from ofm_tiling.errors import OfmTilingError
from ofm_tiling.files import atomic_file
from ofm_tiling.fuse import fuse_bands, mosaic_shape
from ofm_tiling.pixels import halve_u16
from ofm_tiling.preview import write_preview
from ofm_tiling.pyramid import PyramidWriter, check_options, compression_for, write_ome_tiff


@pytest.fixture(scope="module")
def mosaic() -> np.ndarray:
    """A fused H&E mosaic (3 x 4 tiles, feathered)."""
    pos = _grid(3, 4, step=(350, 330), seed=2)
    tiles = _cut(_he_image(), pos)
    bands = fuse_bands(lambda i: tiles[i], pos, (400, 520))
    return np.concatenate([b for _, b in bands])


def _bands(image: np.ndarray, rows: int):
    for y0 in range(0, len(image), rows):
        yield y0, image[y0 : y0 + rows]


@pytest.mark.parametrize("band_rows", [100, 256])  # regrouped into tile rows / passed through
def test_deflate_round_trip_is_exact_with_pyramid_and_pixel_size(tmp_path, mosaic, band_rows):
    out = tmp_path / "m.ome.tif"
    info = write_ome_tiff(out, mosaic.shape, _bands(mosaic, band_rows), pixel_size_um=0.499, tile=256,
                          compression="deflate")
    # halved (rounding up) until the longer side fits in one 256-pixel tile
    assert info["levels"] == [(1067, 1577), (534, 789), (267, 395), (134, 198)]
    assert info["shape"] == (1067, 1577, 3)
    assert sorted(os.listdir(tmp_path)) == ["m.ome.tif"]
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert [lvl.shape for lvl in series.levels] == [(*s, 3) for s in info["levels"]]
        assert series.axes == "YXS"
        page = tif.pages[0]
        assert page.is_tiled and page.tilewidth == 256 and page.photometric == tifffile.PHOTOMETRIC.RGB
        assert len(page.subifds) == 3
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert ome["PhysicalSizeX"] == ome["PhysicalSizeY"] == pytest.approx(0.499)
        assert ome["PhysicalSizeXUnit"] == "µm"
        assert page.get_resolution(tifffile.RESUNIT.CENTIMETER) == pytest.approx((1e4 / 0.499,) * 2, rel=1e-6)
        np.testing.assert_array_equal(series.levels[0].asarray(), mosaic)
        expect = mosaic
        for level in series.levels[1:]:
            expect = halve_reference(expect)
            np.testing.assert_array_equal(level.asarray(), expect)


def test_jpeg_level0_psnr_and_preview(tmp_path, mosaic):
    out, preview = tmp_path / "m.ome.tif", tmp_path / "preview.jpg"
    info = write_ome_tiff(out, mosaic.shape[:2], _bands(mosaic, 333), tile=256, quality=90,
                          preview_path=preview, preview_width=400)
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.JPEG
        level0 = tif.series[0].levels[0].asarray()
        assert len(tif.series[0].levels) == 4
        assert "PhysicalSizeX" not in tif.ome_metadata  # no pixel size given
    psnr = _psnr(level0, mosaic)
    print(f"JPEG q90 level 0 PSNR vs fused mosaic: {psnr:.1f} dB")
    assert psnr > 35
    height = round(mosaic.shape[0] * 400 / mosaic.shape[1])
    with Image.open(preview) as im:
        assert im.format == "JPEG" and im.size == (400, height)
        assert info["preview_shape"] == (height, 400)
        small = np.asarray(im)
    # The preview shows the mosaic, not some other level or garbage.
    ref = np.asarray(Image.fromarray(mosaic).resize((400, height), Image.BOX))
    assert _psnr(small, ref) > 25
    assert sorted(os.listdir(tmp_path)) == ["m.ome.tif", "preview.jpg"]


def test_preview_beyond_the_written_pyramid_and_from_level0(tmp_path, mosaic):
    # levels=1 writes no pyramid; the preview still comes from a 2x-reduced level.
    info = write_ome_tiff(tmp_path / "a.ome.tif", mosaic.shape, _bands(mosaic, 500), levels=1,
                          preview_path=tmp_path / "a.jpg", preview_width=300)
    assert info["levels"] == [mosaic.shape[:2]]
    with tifffile.TiffFile(tmp_path / "a.ome.tif") as tif:
        assert len(tif.series[0].levels) == 1 and not tif.pages[0].subifds
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.width == 300
    # A preview wider than half the mosaic comes from level 0 itself; never enlarged.
    write_ome_tiff(tmp_path / "b.ome.tif", mosaic.shape, _bands(mosaic, 500), preview_path=tmp_path / "b.jpg")
    with Image.open(tmp_path / "b.jpg") as im:
        assert im.size == (1577, 1067)
    assert sorted(os.listdir(tmp_path)) == ["a.jpg", "a.ome.tif", "b.jpg", "b.ome.tif"]


def test_fuse_then_write_pipeline(tmp_path):
    pos = _grid(2, 3, seed=4)
    tiles = _cut(_he_image(), pos)
    shape = mosaic_shape(pos, (400, 520))
    fused = np.concatenate([b for _, b in fuse_bands(lambda i: tiles[i], pos, (400, 520))])
    bands = fuse_bands(lambda i: tiles[i], pos, (400, 520), band_height=200)
    write_ome_tiff(tmp_path / "m.ome.tif", shape, bands, compression="zlib", tile=128)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "m.ome.tif"), fused)


def test_failure_mid_stream_leaves_nothing_behind(tmp_path, mosaic):
    out = tmp_path / "m.ome.tif"
    out.write_bytes(b"previous result")

    def failing_bands():
        yield 0, mosaic[:300]
        yield 300, mosaic[300:600]
        raise RuntimeError("tile 17 is corrupt")

    with pytest.raises(RuntimeError, match="tile 17"):
        write_ome_tiff(out, mosaic.shape, failing_bands(), tile=256, preview_path=tmp_path / "p.jpg")
    assert sorted(os.listdir(tmp_path)) == ["m.ome.tif"]
    assert out.read_bytes() == b"previous result"  # the old file is untouched

    # Bands that stop short, overlap or have the wrong width are errors, not truncated files.
    for bad in ([(0, mosaic[:500])], [(0, mosaic[:500]), (400, mosaic[400:])], [(0, mosaic[:, :100])]):
        with pytest.raises(ValueError):
            write_ome_tiff(tmp_path / "n.ome.tif", mosaic.shape, iter(bad), compression="none")
    assert sorted(os.listdir(tmp_path)) == ["m.ome.tif"]


def test_a_writer_error_stops_the_decoding_threads(tmp_path):
    pos = _grid(3, 3, seed=6)
    tiles = _cut(_he_image(), pos)

    class Cancelled(Exception):
        pass

    def progress(done, total):
        if done > 300:
            raise Cancelled  # e.g. the user pressed Cancel in a GUI

    bands = fuse_bands(lambda i: tiles[i], pos, (400, 520), band_height=100)
    with pytest.raises(Cancelled) as err:
        write_ome_tiff(tmp_path / "m.ome.tif", mosaic_shape(pos, (400, 520)), bands, tile=128, progress=progress)
    # Even while the traceback (holding the generators' frames) is alive, nothing keeps running.
    assert err.value is not None
    assert not [t.name for t in threading.enumerate() if t.name.startswith("ofm-tiling")]
    assert os.listdir(tmp_path) == []


def test_unwritable_folder_is_a_user_error(tmp_path, mosaic):
    (tmp_path / "file").write_text("x")
    for folder in (tmp_path / "missing", tmp_path / "file"):
        with pytest.raises(OfmTilingError, match="cannot write here") as err:
            write_ome_tiff(folder / "m.ome.tif", mosaic.shape, _bands(mosaic, 500))
        assert err.value.path == str(folder)
        with pytest.raises(OfmTilingError, match="cannot write here"):
            write_preview(folder / "p.jpg", mosaic)


def test_full_disk_is_a_user_error(tmp_path, mosaic, monkeypatch):
    def no_space(self, y0, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bands_module.Spool, "write", no_space)
    with pytest.raises(OfmTilingError, match="disk is full"):
        write_ome_tiff(tmp_path / "m.ome.tif", mosaic.shape, _bands(mosaic, 500), tile=256)
    assert os.listdir(tmp_path) == []


def test_atomic_file(tmp_path):  # moves to the lead's tests/test_files.py
    target = tmp_path / "a.txt"
    with atomic_file(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and not target.exists()
        with open(tmp, "w") as f:
            f.write("done")
    assert target.read_text() == "done"
    with pytest.raises(KeyError):
        with atomic_file(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise KeyError("interrupted")
    assert target.read_text() == "done"
    assert os.listdir(tmp_path) == ["a.txt"]


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np

    def peak_mb():
        # VmHWM is the peak RSS of this process image. ru_maxrss would also count the parent
        # (pytest) whose memory the child inherited until exec.
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024

    from ofm_tiling.fuse import fuse_bands, mosaic_shape
    from ofm_tiling.pyramid import write_ome_tiff

    rows, folder = int(sys.argv[1]), sys.argv[2]
    th, tw, cols = 1000, 1500, 4
    rng = np.random.default_rng(0)
    # A smooth texture with noise, like a micrograph, built in small pieces so that setting it
    # up does not itself set the peak; each tile is a fresh shifted copy.
    base = np.empty((th, tw, 3), np.uint8)
    x = np.arange(tw)
    for y in range(th):
        row = 128 + 60 * np.sin(x / 37.0) * np.cos(y / 23.0)
        base[y] = np.clip(row[:, None] + rng.normal(0, 8, (tw, 3)), 0, 255)

    def read_tile(i):
        return np.roll(base, 97 * i, axis=1)

    pos = np.array([(c * 1300, r * 850) for r in range(rows) for c in range(cols)], float)
    pos += rng.integers(-20, 21, pos.shape)
    shape = mosaic_shape(pos, (th, tw))
    before = peak_mb()
    info = write_ome_tiff(os.path.join(folder, "m.ome.tif"), shape,
                          fuse_bands(read_tile, pos, (th, tw), band_height=256),
                          preview_path=os.path.join(folder, "p.jpg"), preview_width=500)
    peak = peak_mb()
    print(json.dumps({"before_mb": before, "peak_mb": peak,
                      "mosaic_mb": shape[0] * shape[1] * 3 / 2**20, "levels": len(info["levels"])}))
    """
)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_peak_memory_does_not_grow_with_mosaic_height(tmp_path):
    runs = {}
    # From 4 rows of tiles on, the pipeline is in its steady state (a row decoding ahead while
    # two are blended); 24 rows have 6x the pixels.
    for rows in (4, 24):
        folder = tmp_path / str(rows)
        folder.mkdir()
        done = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(rows), str(folder)],
                              capture_output=True, text=True, check=True, timeout=120)
        runs[rows] = json.loads(done.stdout)
        assert sorted(os.listdir(folder)) == ["m.ome.tif", "p.jpg"]
    print("peak RSS:", {r: f"{v['peak_mb']:.0f} MB (mosaic {v['mosaic_mb']:.0f} MB)" for r, v in runs.items()})
    grown = runs[24]["peak_mb"] - runs[4]["peak_mb"]
    mosaic_grown = runs[24]["mosaic_mb"] - runs[4]["mosaic_mb"]  # ~265 MB more pixels
    # Measured 15-30 MB: no per-row growth, only rarer worst-case overlaps of buffers between
    # threads and allocator fragmentation in a longer run.
    assert grown < 0.2 * mosaic_grown
    # Working set (two rows of 4.5 MB tiles, bands, scratch, encoder) well under the mosaic.
    assert runs[24]["peak_mb"] - runs[24]["before_mb"] < 0.5 * runs[24]["mosaic_mb"]


def test_check_options_names_the_parameter():
    assert check_options(compression="JPEG", quality=np.int64(75)).quality == 75
    assert check_options(compression="zlib").name == "deflate"  # a synonym
    assert check_options(compression="none", dtype=np.uint16).name == "none"
    bad = [({"compression": "png"}, "compression must be one of 'jpeg', 'deflate', 'none', got 'png'"),
           ({"quality": 0}, "quality must be an integer from 1 to 100, got 0"),
           ({"quality": 101}, "quality must be an integer from 1 to 100"),
           ({"quality": 90.5}, "quality must be an integer from 1 to 100"),
           ({"quality": True}, "quality must be an integer from 1 to 100"),
           ({"dtype": np.uint16}, "compression must be 'deflate' or 'none' for uint16"),
           ({"dtype": np.float32}, "dtype must be uint8 or uint16")]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            check_options(**kwargs)


def test_bad_options_are_refused_before_any_pixel_is_read(tmp_path, mosaic):
    started = []

    def bands():
        started.append(True)
        yield 0, mosaic

    bad = [({"quality": 0}, "quality"), ({"compression": "lzw"}, "compression"), ({"tile": 100}, "tile"),
           ({"levels": 0}, "levels"), ({"pixel_size_um": -1}, "pixel_size_um"), ({"channels": 2}, "channels"),
           ({"preview_path": tmp_path / "p.jpg", "preview_width": 0}, "preview_width")]
    for kwargs, name in bad:
        with pytest.raises(ValueError, match=f"^{name} must"):
            PyramidWriter(tmp_path / "m.ome.tif", mosaic.shape, **kwargs)
        with pytest.raises(ValueError, match=f"^{name} must"):
            write_ome_tiff(tmp_path / "m.ome.tif", mosaic.shape, bands(), **kwargs)
    with pytest.raises(ValueError, match=r"shape must be \(height, width\) or \(height, width, 3\)"):
        PyramidWriter(tmp_path / "m.ome.tif", (10, 10, 4))
    assert not started and os.listdir(tmp_path) == []


def test_jpeg_tiles_are_rgb_jpeg_read_alike_by_tifffile_libtiff_and_pillow(tmp_path, mosaic):
    import imagecodecs

    out = tmp_path / "m.ome.tif"
    write_ome_tiff(out, mosaic.shape, _bands(mosaic, 256), tile=256, quality=90, levels=2)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.JPEG
        # RGB JPEG, not YCbCr: no colour transform for a reader to apply twice (issue #14).
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        level0 = tif.series[0].levels[0].asarray()
    assert _psnr(level0, mosaic) > 40  # full colour resolution; subsampled YCbCr stays near 33 dB
    np.testing.assert_array_equal(imagecodecs.tiff_decode(out.read_bytes()), level0)  # libtiff
    with Image.open(out) as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), level0)  # Pillow, through libtiff


@pytest.mark.parametrize("compression", ["deflate", "jpeg"])
def test_grey_mosaic_is_written_as_one_channel(tmp_path, mosaic, compression):
    grey = np.ascontiguousarray(mosaic[..., 0])
    out, preview = tmp_path / "g.ome.tif", tmp_path / "g.jpg"
    info = write_ome_tiff(out, grey.shape, _bands(grey, 300), channels=1, tile=256, compression=compression,
                          pixel_size_um=2.0, preview_path=preview, preview_width=300)
    assert info["shape"] == grey.shape and len(info["levels"]) == 4
    with tifffile.TiffFile(out) as tif:
        series = tif.series[0]
        assert series.axes == "YX" and tif.pages[0].photometric == tifffile.PHOTOMETRIC.MINISBLACK
        levels = [level.asarray() for level in series.levels]
    expect = grey  # every level is halved from the exact pixels, whatever the compression
    for level in levels:
        if compression == "deflate":
            np.testing.assert_array_equal(level, expect)
        else:
            assert level.dtype == np.uint8 and _psnr(level, expect) > 38
        expect = halve_reference(expect[..., None])[..., 0]
    with Image.open(preview) as im:
        assert im.mode == "L" and im.width == 300


def test_sixteen_bit_jpeg_is_refused_and_the_run_stores_it_losslessly(tmp_path):
    with pytest.raises(ValueError, match="'deflate' or 'none' for uint16"):
        PyramidWriter(tmp_path / "m.ome.tif", (10, 10), channels=1, dtype=np.uint16)
    assert compression_for("jpeg", "grey16")[0] == "deflate" and "losslessly" in compression_for("jpeg", "grey16")[1]
    assert compression_for("none", "grey16") == ("none", None)
    assert compression_for("jpeg", "grey8") == ("jpeg", None)


def test_sixteen_bit_grey_pyramid_is_exact_at_every_level(tmp_path):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 65536, (1100, 1300), dtype=np.uint16)
    image[:, :40] = 3  # a dark edge and a bright spot beyond the display range
    image[500:510, 600:610] = 65535
    path, preview = tmp_path / "m.ome.tif", tmp_path / "p.jpg"
    bands = [(y0, image[y0 : y0 + 300]) for y0 in range(0, 1100, 300)]
    info = write_ome_tiff(path, image.shape, bands, pixel_type="grey16", compression="deflate", tile=256,
                          preview_path=preview, preview_width=200)
    with tifffile.TiffFile(path) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
        assert tif.series[0].dtype == np.uint16 and tif.series[0].axes == "YX"
        assert 'Type="uint16"' in tif.ome_metadata and 'SizeC="1"' in tif.ome_metadata
    expect = image
    for level in levels:
        np.testing.assert_array_equal(level, expect)
        expect = halve_u16(expect)
    lo, hi = info["display_range"]
    assert [lo, hi] == display_range(levels[-1]).to_json()
    # Percentiles of the smallest level: the dark edge is black; averaged noise stays well below 65535.
    assert lo == 3 and 32768 < hi < 50000
    with Image.open(preview) as im:
        assert im.mode == "L" and im.width == 200
