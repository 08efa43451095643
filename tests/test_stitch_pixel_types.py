"""`stitch` end to end on greyscale tiles: registration, fusion, OME-TIFF, preview, report, viewer.

8-bit grey smart-stack scans and 16-bit grey TileConfiguration folders (PNG and TIFF), each against
the generator's truth.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from conftest import placement_errors, psnr
from PIL import Image

from ofm_tiling.imageio import read_tile
from ofm_tiling.pixels import luma
from ofm_tiling.stitch import stitch


def test_grey_smart_stack_stitches_to_a_grey_mosaic(copy_scan):
    scan, truth = copy_scan("grey8-stack", grid=(3, 2), planes=1, pixel_type="grey8", subpixel=False,
                            focus_jitter=0, seed=4)
    result = stitch(scan, check_focus=False, viewer=True, compression="deflate")  # lossless: fusion alone is judged
    assert placement_errors(result.positions, truth.true_xy_array()).max() < 1.0
    with tifffile.TiffFile(result.mosaic) as tif:
        mosaic = tif.series[0].levels[0].asarray()
        assert 'Type="uint8"' in tif.ome_metadata and 'SizeC="1"' in tif.ome_metadata
    assert mosaic.dtype == np.uint8 and mosaic.shape == result.shape  # one channel, as the tiles
    with Image.open(scan / truth.truth_png) as im:
        canvas = luma(np.asarray(im.convert("RGB")))
    x0, y0 = (truth.true_xy_array() - result.positions).mean(axis=0).round().astype(int)
    expect = canvas[y0:y0 + mosaic.shape[0], x0:x0 + mosaic.shape[1]]
    th, tw = truth.tile_shape
    covered = np.zeros(mosaic.shape, bool)  # by the tiles (JPEG ringing lightens uncovered black near edges)
    for x, y in np.rint(result.positions).astype(int):
        covered[y:y + th, x:x + tw] = True
    value = psnr(mosaic[covered], expect[covered])
    # The ceiling is what one tile reaches against the truth (sensor noise, blur, JPEG): fusion may not lose more.
    tiles = [psnr(read_tile(path, "grey8"), canvas[int(y):int(y) + th, int(x):int(x) + tw])
             for path, (x, y) in zip(result.collection.paths, truth.true_xy_array())]
    assert value > 25 and value >= min(tiles) - 0.5, (value, tiles)
    with Image.open(result.preview) as im:
        assert im.mode == "L"
    extra = json.loads(result.report.read_text())["extra"]
    assert extra["pixel_type"] == "grey8" and extra["display_range"] == [0, 255]
    with Image.open(result.out_dir / "viewer" / "tiles" / "0" / "0_0.jpg") as tile:
        assert tile.mode == "L"


@pytest.mark.parametrize("tile_format", ["png", "tiff"])
def test_sixteen_bit_tile_folders_stitch_to_a_sixteen_bit_mosaic(copy_scan, tile_format):
    """A TileConfiguration folder of 16-bit grey tiles: placed to the smart-stack targets, written
    as a lossless uint16 mosaic holding the tiles' own values, shown with one contrast setting."""
    scan, truth = copy_scan(f"grey16-{tile_format}", kind="tileconfig", pixel_type="grey16", tile_format=tile_format,
                            grid=(4, 3), seed=11)
    result = stitch(scan, check_focus=False)
    err = placement_errors(result.positions, truth.true_xy_array())
    stage = placement_errors(result.collection.positions, truth.true_xy_array())
    assert result.collection.kind == "tileconfig" and result.collection.pixel_type == "grey16"
    assert np.median(err) <= 0.3 and err.max() <= 1.0 and stage.max() > 10, err
    with tifffile.TiffFile(result.mosaic) as tif:
        mosaic = tif.series[0].levels[0].asarray()
        assert 'Type="uint16"' in tif.ome_metadata and 'SizeC="1"' in tif.ome_metadata
    assert mosaic.dtype == np.uint16 and mosaic.shape == result.shape
    assert any("losslessly" in n or "deflate" in n for n in result.notes), result.notes
    # The top-left tile alone covers its top-left corner: the mosaic holds its 16-bit values exactly.
    first = read_tile(result.collection.paths[0], "grey16")
    x, y = np.rint(result.positions[0]).astype(int)
    np.testing.assert_array_equal(mosaic[y : y + 50, x : x + 50], first[:50, :50])
    assert first.max() > 255  # really 16 bits
    extra = json.loads(result.report.read_text())["extra"]
    low, high = extra["display_range"]
    assert extra["pixel_type"] == "grey16" and extra["kind"] == "tileconfig" and 0 <= low < high <= 65535
    with Image.open(result.preview) as im:
        assert im.mode == "L"
