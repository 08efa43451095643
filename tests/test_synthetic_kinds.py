"""Every kind the generator writes (flat OFM scans, TileConfiguration folders; 8-bit RGB, 8-bit and
16-bit greyscale): files read back at the right bit depth, the truth matches the pixels and the metadata."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from conftest import psnr
from PIL import Image

from ofm_tiling.metadata import read_metadata
from ofm_tiling.pixels import luma
from ofm_tiling.synthetic import ScanSpec, load_truth, make_scan
from ofm_tiling.tileconfig import read_tile_configuration

TILE = (96, 128)  # (height, width)
FAST = dict(tile_shape=TILE, grid=(3, 2), source="procedural", subpixel=False, scramble_mtimes=False)


def _read(path) -> np.ndarray:
    """Pixels as stored: tifffile for TIFF, Pillow otherwise (no conversion)."""
    if path.suffix == ".tif":
        return tifffile.imread(path)
    with Image.open(path) as im:
        return np.asarray(im)


def _canvas(folder) -> np.ndarray:
    return np.asarray(Image.open(folder / "truth.png").convert("RGB"), dtype=np.float32)


def _crop(canvas: np.ndarray, xy: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    x, y = (int(v) for v in xy)
    return canvas[y:y + shape[0], x:x + shape[1]]


# ---------------------------------------------------------------------------------------------- flat

def test_flat_scan_is_one_folder_of_jpegs_with_ofm_metadata(tmp_path):
    out = tmp_path / "flat"
    truth = make_scan(out, kind="flat", planes=3, layout="v3", seed=3, **FAST)
    assert truth.kind == "flat" and truth.planes == 3
    names = sorted(p.name for p in out.iterdir())
    files = sorted(f for p in truth.positions for f in p.files)
    assert names == sorted(files + ["truth.json", "truth.png"])  # no sub-folders, no data.json
    assert len(files) == 6 * 3
    # Names say nothing about position or capture order.
    capture_order = [f for p in truth.positions for f in p.files]
    assert capture_order != sorted(capture_order)
    canvas = _canvas(out)
    for p in truth.positions:
        assert p.folder == ""
        for name, z in zip(p.files, p.z_steps):
            meta = read_metadata(out / name)
            assert meta.layout == "v3" and meta.problem is None
            assert meta.stage == (p.stage_xyz[0], p.stage_xyz[1], z)  # a z-stack at one x-y position
            assert meta.is_central == (name == p.central_file)
            assert np.allclose(meta.csm, truth.csm_matrix)
            pixels = _read(out / name)
            assert pixels.dtype == np.uint8 and pixels.shape == (*TILE, 3)
        central = _read(out / p.central_file).astype(np.float32)
        assert psnr(central, _crop(canvas, p.true_xy, TILE)) > 32
    # The recorded stage positions map to the nominal corners by the documented rule.
    assert np.allclose(truth.stage_to_canvas_xy(truth.stage_xy_array()), [p.nominal_xy for p in truth.positions])


def test_flat_scan_incomplete_stops_before_the_last_position(tmp_path):
    truth = make_scan(tmp_path / "f", kind="flat", incomplete=True, truth_png=False, **FAST)
    assert len(truth.positions) == 5 and truth.failed_info["index"] == 5 and truth.failed_folder is None
    assert len(list((tmp_path / "f").glob("*.jpeg"))) == 5


# ---------------------------------------------------------------------------------------------- tileconfig

@pytest.mark.parametrize(("pixel_type", "tile_format", "dtype"), [
    ("rgb8", "png", np.uint8), ("grey8", "tiff", np.uint8), ("grey16", "png", np.uint16),
    ("grey16", "tiff", np.uint16)])
def test_tileconfig_folder(tmp_path, pixel_type, tile_format, dtype):
    out = tmp_path / "tc"
    truth = make_scan(out, kind="tileconfig", pixel_type=pixel_type, tile_format=tile_format, seed=5, **FAST)
    assert truth.kind == "tileconfig" and truth.tile_config == "TileConfiguration.txt" and truth.planes == 1
    names, xy = read_tile_configuration(out / truth.tile_config)
    assert names == [p.files[0] for p in truth.positions]
    nominal = np.array([p.nominal_xy for p in truth.positions])
    assert np.allclose(xy + np.array(truth.config_origin_xy), nominal, atol=1e-3)
    error = np.abs(nominal - truth.true_xy_array())
    assert error.max() <= truth.stage_error_px + 0.5 and error.max() > 5  # registration has work to do
    canvas = _canvas(out)
    grey = pixel_type != "rgb8"
    scale = 257.0 if dtype == np.uint16 else 1.0
    for p in truth.positions:
        tile = _read(out / p.files[0])
        assert tile.dtype == dtype and tile.shape == (TILE if grey else (*TILE, 3))
        expected = _crop(canvas, p.true_xy, TILE)
        expected = luma(expected) if grey else expected
        assert psnr(tile / scale, expected) > 34
        # One pixel off is far worse: the truth position is the one the pixels hold.
        x, y = p.true_xy
        off = _crop(canvas, (x + 1, y + 1), TILE)
        assert psnr(tile / scale, luma(off) if grey else off) < 28
    if dtype == np.uint16:
        assert tile.max() > 255 and len(np.unique(tile)) > 256  # really 16-bit, not 8-bit in a 16-bit file


def test_grey8_smart_stack_jpegs(tmp_path):
    truth = make_scan(tmp_path / "g", pixel_type="grey8", planes=2, truth_png=False, **FAST)
    p = truth.positions[0]
    with Image.open(tmp_path / "g" / p.folder / p.files[0]) as im:
        assert im.format == "JPEG" and im.mode == "L" and im.size == TILE[::-1]
    assert read_metadata(tmp_path / "g" / p.folder / p.files[0]).stage[:2] == p.stage_xyz[:2]


def test_same_pixels_as_rgb_whatever_the_kind(tmp_path):
    """Kind and pixel type change the files, not the scene: grey tiles are the luma of the RGB ones."""
    rgb = make_scan(tmp_path / "a", kind="tileconfig", tile_format="png", noise_sigma=0, seed=2, **FAST)
    grey = make_scan(tmp_path / "b", kind="tileconfig", tile_format="png", pixel_type="grey8", noise_sigma=0,
                     seed=2, **FAST)
    assert rgb.true_xy_array().tolist() == grey.true_xy_array().tolist()
    a = _read(tmp_path / "a" / rgb.positions[0].files[0])
    b = _read(tmp_path / "b" / grey.positions[0].files[0])
    assert np.abs(luma(a) - b).max() <= 1


# ---------------------------------------------------------------------------------------------- spec

def test_keywords_equal_a_spec(tmp_path):
    spec = ScanSpec(kind="tileconfig", tile_format="tiff", **FAST)
    assert make_scan(tmp_path / "a", spec) == make_scan(tmp_path / "b", **{**FAST, "kind": "tileconfig",
                                                                         "tile_format": "tiff"})
    assert make_scan(tmp_path / "c", spec, seed=7).seed == 7  # keywords override the spec
    assert ScanSpec().planes == 9 and ScanSpec(kind="flat").planes == 1


@pytest.mark.parametrize(("fields", "name"), [
    (dict(tile_shape=(10, 10)), "tile_shape"), (dict(grid=(0, 3)), "grid"), (dict(overlap=0.97), "overlap"),
    (dict(pixel_type="grey16"), "tile_format"), (dict(kind="flat", tile_format="png"), "tile_format"),
    (dict(kind="tileconfig", planes=3), "planes"), (dict(kind="tileconfig", incomplete=True), "kind"),
    (dict(kind="zigzag"), "kind"), (dict(jpeg_quality=0), "jpeg_quality"), (dict(blank_tiles=(99,)), "blank_tiles"),
    (dict(mistag={0: "odd"}), "mistag"), (dict(pixel_size_um=-1.0), "pixel_size_um"),
    (dict(vignetting=1.5), "vignetting"), (dict(noise_sigma=-2), "noise_sigma")])
def test_bad_spec_names_the_parameter(fields, name):
    with pytest.raises(ValueError) as err:
        ScanSpec(**fields)
    message = str(err.value)
    assert message.startswith(name) and "\n" not in message


def test_old_truth_files_still_load(tmp_path):
    truth = make_scan(tmp_path / "s", grid=(2, 1), tile_shape=TILE, planes=1, source="procedural", truth_png=False)
    doc = json.loads((tmp_path / "s" / "truth.json").read_text())
    for key in ("kind", "pixel_type", "tile_format", "tile_config", "config_origin_xy"):
        doc.pop(key)
    doc["tile_size"] = doc.pop("tile_shape")[::-1]
    doc["schema"] = "ofm-tiling-synthetic-truth/1"
    (tmp_path / "s" / "truth.json").write_text(json.dumps(doc))
    assert load_truth(tmp_path / "s") == truth
