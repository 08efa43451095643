"""What registration reads of tiles of every type (`ofm_tiling.register.tiles`), and that it places them."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import placement_errors

from ofm_tiling.imageio import read_luminance, read_tile
from ofm_tiling.pixels import block_mean
from ofm_tiling.register import JpegTiles, register
from ofm_tiling.solve import solve


def _scan(scans, pixel_type: str, tile_format: str):
    folder, truth = scans(f"register-{pixel_type}-{tile_format}", kind="tileconfig", grid=(3, 2),
                          pixel_type=pixel_type, tile_format=tile_format)
    return [folder / p.central_file for p in truth.positions], truth


@pytest.mark.parametrize(("pixel_type", "tile_format"), [("grey16", "png"), ("grey16", "tiff"), ("grey8", "jpeg")])
def test_grey_tiles_read_for_registration(scans, pixel_type, tile_format):
    paths, truth = _scan(scans, pixel_type, tile_format)
    tiles = JpegTiles(paths)
    for scale in (1, 4):
        grey = tiles.gray(0, scale)
        assert grey.shape == tuple(-(-n // scale) for n in truth.tile_shape)
        if tile_format == "jpeg":  # DCT-scaled grey decode, as before
            np.testing.assert_array_equal(grey, read_luminance(paths[0], scale))
        else:  # the 16-bit values themselves (block means), never clipped to 8 bits
            assert grey.dtype == np.float32 and grey.max() > 255
            np.testing.assert_allclose(grey, block_mean(read_tile(paths[0]), scale), rtol=1e-6)


@pytest.mark.parametrize("tile_format", ["png", "tiff"])
def test_sixteen_bit_tiles_are_placed_at_their_true_positions(scans, tile_format):
    paths, truth = _scan(scans, "grey16", tile_format)
    stage = np.array([p.nominal_xy for p in truth.positions])
    registration = register(JpegTiles(paths), stage, tile_shape=truth.tile_shape, workers=2)
    assert sum(link.accepted for link in registration.links) >= 6  # 7 neighbour pairs in a 3x2 grid
    errors = placement_errors(solve(stage, registration.links).positions, truth.true_xy_array())
    assert errors.max() < 1.0  # stage errors of 20 px recovered to sub-pixel accuracy
