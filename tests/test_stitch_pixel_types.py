"""`stitch` end to end on 8-bit greyscale tiles: registration, fusion, OME-TIFF, preview, report, viewer.

Until collection recognises tile types itself (the `kinds` work), `collect_into` is wrapped to set
`Collection.pixel_type` from the first tile, as collection will; everything after it is the real run.
The 16-bit path is tested below stitch (`test_fuse`, `test_pyramid`, `test_viewer`, `test_register_tiles`)
until collection can read TileConfiguration folders of PNG or TIFF tiles.
"""
from __future__ import annotations

import dataclasses
import importlib
import json

import numpy as np
import tifffile
from conftest import placement_errors, psnr
from PIL import Image

from ofm_tiling.imageio import read_tile
from ofm_tiling.pixels import luma, pixel_type_of
from ofm_tiling.stitch import stitch


def test_grey_smart_stack_stitches_to_a_grey_mosaic(copy_scan, monkeypatch):
    scan, truth = copy_scan("grey8-stack", grid=(3, 2), planes=1, pixel_type="grey8", subpixel=False,
                            focus_jitter=0, seed=4)
    collect = importlib.import_module("ofm_tiling.collect")  # the module (ofm_tiling.collect is a function)
    real = collect.collect_into

    def collect_into(*args, **kwargs):
        collection = real(*args, **kwargs)
        return dataclasses.replace(collection, pixel_type=pixel_type_of(read_tile(collection.paths[0])))

    monkeypatch.setattr(collect, "collect_into", collect_into)
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
