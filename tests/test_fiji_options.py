"""Option strings of Fiji's Grid/Collection stitching (ofm_tiling.fiji.options), read back with ImageJ 1's
OWN parser (Debian's libij-java, through scyjava; see tests/fiji_standin/harness.py), and Fiji's grid
orders (ofm_tiling.fiji.grid).
"""
from __future__ import annotations

import numpy as np
import pytest
from fiji_standin.harness import GRID_LABELS, POSITIONS_LABELS, UNWANTED_FLAGS, ij_value, read_back

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.fiji.grid import infer_grid
from ofm_tiling.fiji.options import (
    COLUMN_ORDERS,
    GRID_TYPES,
    REGISTRATION_ONLY,
    ROW_ORDERS,
    GridSpec,
    grid_collection_options,
    tile_name_pattern,
)

pytest_plugins = ("fiji_standin.fixtures",)  # fixtures: ij (ImageJ 1 in this process)


# Option strings


PATHS = ["/data/scans/plain/use", "/data/My Scans/scan 2024-05-01 (slide 3)/use",
         "/data/it's \"quoted\"/use", "/data/sc\u00e4n \u00fc\u4e2d/use", "C:\\Users\\Ann\\scan 1\\use"]


@pytest.mark.parametrize("directory", PATHS)
def test_positions_options_read_back_exactly(ij, directory):
    out = "/data/out dir/fused"
    options = grid_collection_options(directory, output_directory=out)
    got = read_back(ij, options, POSITIONS_LABELS + ["Output_directory"])
    expected_dir = directory.replace("\\", "/")
    assert got == {
        "type": "Positions from file", "order": "Defined by TileConfiguration",
        "directory": expected_dir,  # the tile folder, not the output folder
        "layout_file": "TileConfiguration.txt", "fusion_method": "Linear Blending",
        "regression_threshold": "0.30", "max/avg_displacement_threshold": "2.50",
        "absolute_displacement_threshold": "3.50",
        "computation_parameters": "Save computation time (but use more RAM)",
        "image_output": "Write to disk", "output_directory": out,
        "compute_overlap": True, "subpixel_accuracy": True,
        "add_tiles_as_rois": False, "invert_x": False, "invert_y": False, "ignore_z_stage": False,
        "downsample_tiles": False, "use_virtual_input_images": False,
    }


def test_directory_key_is_found_inside_output_directory_when_misordered(ij):
    # The trap the key order avoids: ImageJ finds "directory=" inside "output_directory=".
    options = grid_collection_options("/in/use", output_directory="/out/fused")
    swapped = "output_directory=[/out/fused] " + options.replace(" output_directory=[/out/fused]", "")
    assert ij_value(ij, swapped, "Directory") == "/out/fused"
    assert ij_value(ij, options, "Directory") == "/in/use"
    assert options.index("directory=[/in/use]") < options.index("output_directory=")


def test_absent_flags_are_false_and_other_settings_are_kept(ij):
    options = grid_collection_options("/in/use", compute_overlap=False, subpixel=False, fusion="Average",
                                      regression_threshold=0.125, max_avg_displacement=3,
                                      absolute_displacement=10.5, save_memory=True)
    got = read_back(ij, options, POSITIONS_LABELS)
    assert got["compute_overlap"] is False and got["subpixel_accuracy"] is False
    assert "compute_overlap" not in options and "subpixel" not in options
    assert got["fusion_method"] == "Average"
    assert float(got["regression_threshold"]) == 0.125
    assert float(got["max/avg_displacement_threshold"]) == 3.0
    assert float(got["absolute_displacement_threshold"]) == 10.5
    assert got["computation_parameters"] == "Save memory (but be slower)"
    assert got["image_output"] == "Fuse and display"
    assert ij_value(ij, options, "Output_directory") is None  # not asked for without Write to disk


def _snake_columns_spec() -> GridSpec:
    cells = tuple((x, y) for x in range(3) for y in (range(4) if x % 2 == 0 else range(3, -1, -1)))
    return GridSpec(3, 4, GRID_TYPES[3], COLUMN_ORDERS[0], 25.0, 30.0, cells)


@pytest.mark.parametrize("grid, order, pattern, first, type_, order_text, size", [
    ((4, 3), "raster", "{ii}.jpeg", 0, "Grid: row-by-row", "Right & Down" + " " * 16, (4, 3)),
    ((5, 2), "snake", "{ii}.jpeg", 0, "Grid: snake by rows", "Right & Down" + " " * 16, (5, 2)),
    ((12, 10), "raster", "{iii}.jpeg", 0, "Grid: row-by-row", "Right & Down" + " " * 16, (12, 10)),
    (_snake_columns_spec(), None, "tile_{iii}.tif", 1, "Grid: snake by columns", "Down & Right" + " " * 16, (3, 4)),
    (GridSpec(2, 2, GRID_TYPES[0], ROW_ORDERS[3], 20.0, 20.0), None, "{ii}.jpeg", 0, "Grid: row-by-row",
     "Left & Up", (2, 2)),
], ids=["raster", "snake", "120-tiles-iii", "snake-columns", "left-up"])
def test_grid_options_read_back_exactly(ij, grid, order, pattern, first, type_, order_text, size):
    options = grid_collection_options("/scans/a b/use", layout="grid", grid=grid, order=order,
                                      overlap_percent=None if isinstance(grid, GridSpec) else 30,
                                      file_pattern=pattern, first_index=first)
    got = read_back(ij, options, GRID_LABELS)
    assert got["type"] == type_
    assert got["order"] == order_text  # padding kept: headless, a near miss becomes choice 0
    assert (int(got["grid_size_x"]), int(got["grid_size_y"])) == size
    expected_overlap = grid.overlap_percent if isinstance(grid, GridSpec) else 30
    assert float(got["tile_overlap"]) == pytest.approx(expected_overlap)
    assert int(got["first_file_index_i"]) == first
    assert got["directory"] == "/scans/a b/use"
    assert got["file_names"] == pattern
    assert got["output_textfile_name"] == "TileConfiguration.grid.txt"  # never our TileConfiguration.txt
    assert got["compute_overlap"] and got["subpixel_accuracy"]
    assert not any(got[str(ij.Macro.trimKey(label))] for label in UNWANTED_FLAGS)
    assert None not in got.values(), "every key the grid dialog reads must be given"


@pytest.mark.parametrize("kwargs, says", [
    (dict(directory="/data/scan [2]/use"), "'[' or ']'"),
    (dict(directory="/data/use", output_directory="/out/[x]"), "'[' or ']'"),
    (dict(directory="/data/use ", ), "space"),
    (dict(directory="/data/use", fusion="Linear blending"), "fusion method"),
    (dict(directory="/data/use", layout="grid", grid=(3, 2), overlap_percent=20, file_pattern="tile.jpeg"), "{ii}"),
    (dict(directory="/data/use", layout="grid", grid=(3, 2), overlap_percent=20,
          output_textfile_name="TileConfiguration.txt"), "overwrite"),
    (dict(directory="/data/use", layout="grid", grid=(3, 2)), "overlap"),
    (dict(directory="/data/use", layout="grid", grid=(1, 1), overlap_percent=10), "2 tiles"),
    (dict(directory="/data/use", layout="tiles"), "layout"),
])
def test_options_fiji_would_misread_are_refused_in_one_line(kwargs, says):
    directory = kwargs.pop("directory")
    with pytest.raises(OfmTilingError) as err:
        grid_collection_options(directory, **kwargs)
    assert says in str(err.value)
    assert "\n" not in str(err.value)

def test_registration_only_options_ask_fiji_for_no_fusion(ij):
    options = grid_collection_options("/in/use", fusion=REGISTRATION_ONLY)
    got = read_back(ij, options, POSITIONS_LABELS)
    assert got["fusion_method"] == "Do not fuse images (only write TileConfiguration)"
    assert got["compute_overlap"] and got["subpixel_accuracy"]


# Grids


def _positions(cells, step=(700.0, 500.0), jitter=0.0, seed=0):
    rng = np.random.default_rng(seed)
    p = np.array(cells, float) * step
    return p + rng.uniform(-jitter, jitter, p.shape)


@pytest.mark.parametrize("cells, grid_type, order", [
    ([(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)], "Grid: row-by-row", "Right & Down" + " " * 16),
    ([(0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (0, 1)], "Grid: snake by rows", "Right & Down" + " " * 16),
    ([(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)], "Grid: snake by columns", "Down & Right" + " " * 16),
    ([(2, 1), (1, 1), (0, 1), (2, 0), (1, 0), (0, 0)], "Grid: row-by-row", "Left & Up"),
    ([(1, 0), (0, 0), (0, 1), (1, 1), (1, 2), (0, 2)], "Grid: snake by rows", "Left & Down"),
    ([(0, 2), (0, 1), (0, 0), (1, 2), (1, 1), (1, 0)], "Grid: column-by-column", "Up & Right"),
], ids=["raster", "snake", "snake-columns", "raster-from-bottom-right", "snake-from-top-right", "columns-upwards"])
def test_infer_grid_recognises_fijis_orders(cells, grid_type, order):
    spec = infer_grid(_positions(cells, jitter=25), tile_shape=(600, 1000))
    assert (spec.grid_type, spec.order) == (grid_type, order)
    assert (spec.cols, spec.rows) == (max(c for c, _ in cells) + 1, max(r for _, r in cells) + 1)
    assert spec.cells == tuple(cells)
    assert spec.overlap_x_percent == pytest.approx(30, abs=3)
    assert spec.overlap_y_percent == pytest.approx(100 * (1 - 500 / 600), abs=3)


def test_infer_grid_single_row_and_snake_of_many():
    row = infer_grid(_positions([(i, 0) for i in range(5)]), tile_shape=(600, 1000))
    assert (row.cols, row.rows, row.overlap_y_percent) == (5, 1, None)
    assert row.overlap_percent == pytest.approx(30)
    cells = [(x if y % 2 == 0 else 11 - x, y) for y in range(10) for x in range(12)]
    spec = infer_grid(_positions(cells, jitter=40), tile_shape=(600, 1000))
    assert (spec.cols, spec.rows, spec.grid_type) == (12, 10, "Grid: snake by rows")


@pytest.mark.parametrize("cells, says", [
    ([(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)], "not a complete rectangular grid"),
    ([(0, 0), (1, 0), (1, 0), (0, 1)], "same grid position"),
    ([(0, 0), (2, 1), (1, 0), (0, 1), (1, 1), (2, 0)], "not taken row by row"),
    ([(0, 0)], "at least 2 tiles"),
])
def test_infer_grid_refuses_what_fijis_grid_cannot_number(cells, says):
    with pytest.raises(OfmTilingError, match=says):
        infer_grid(_positions(cells), tile_shape=(600, 1000))


def test_infer_grid_refuses_uneven_steps_and_gaps():
    uneven = np.array([(0, 0), (700, 0), (1900, 0)], float)
    with pytest.raises(OfmTilingError, match="not evenly spaced"):
        infer_grid(uneven, tile_shape=(600, 1000))
    gaps = np.array([(0, 0), (1200, 0)], float)
    with pytest.raises(OfmTilingError, match="do not overlap"):
        infer_grid(gaps, tile_shape=(600, 1000))


@pytest.mark.parametrize("suffix", [".tif", ".png", ".jpeg"])
def test_tile_name_pattern_of_any_tile_format_reads_back_in_imagej(ij, suffix):
    """Tiles of TileConfiguration folders keep their format in use/ (00.tif, 01.png...)."""
    pattern, first = tile_name_pattern([f"{i:02d}{suffix}" for i in range(6)])
    assert (pattern, first) == ("{ii}" + suffix, 0)
    assert tile_name_pattern([f"{i:03d}{suffix}" for i in range(101)]) == ("{iii}" + suffix, 0)
    options = grid_collection_options("/scans/tiles/use", layout="grid", grid=(3, 2), order="raster",
                                      overlap_percent=30, file_pattern=pattern, first_index=first)
    got = read_back(ij, options, GRID_LABELS)
    assert got["file_names"] == "{ii}" + suffix and int(got["first_file_index_i"]) == 0


def test_tile_name_pattern():
    assert tile_name_pattern([f"{i:02d}.jpeg" for i in range(12)]) == ("{ii}.jpeg", 0)
    assert tile_name_pattern([f"{i:03d}.jpeg" for i in range(120)]) == ("{iii}.jpeg", 0)
    assert tile_name_pattern([f"{i:02d}.jpeg" for i in range(95, 105)]) == ("{ii}.jpeg", 95)  # 100 not cut
    with pytest.raises(OfmTilingError, match="03.jpeg"):
        tile_name_pattern(["00.jpeg", "01.jpeg", "02.jpeg", "04.jpeg"])
    with pytest.raises(OfmTilingError, match="numbers"):
        tile_name_pattern(["a.jpeg", "b.jpeg"])
