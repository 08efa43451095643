"""Every kind of tile folder (ofm_tiling.sources): recognised, collected byte for byte with the right
TileConfiguration, and stitched to the smart-stack accuracy targets against generated ground truth."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import offset_free_error, placement_errors, snapshot

from ofm_tiling.cli import main
from ofm_tiling.collect import collect
from ofm_tiling.errors import OfmTilingError, OptionError
from ofm_tiling.sources import NOT_A_SCAN, find_kind, read_source
from ofm_tiling.stitch import stitch
from ofm_tiling.tileconfig import read_tile_configuration, write_tile_configuration

SMALL_GRID = dict(grid=(3, 2), source="procedural")


def _central(truth, position) -> str:
    """The file of the image to use, relative to the scan folder."""
    name = position.central_file if truth.kind != "tileconfig" else position.files[0]
    return (Path(position.folder) / name).as_posix()


def _cli_error(capsys, *args) -> str:
    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("ofm-tiling: error: "), (out, err)
    return lines[0]


# --- recognition ------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "options"), [
    ("smart-stack", dict(planes=2)), ("flat", dict(planes=3)), ("flat", dict(pixel_type="grey8")),
    ("tileconfig", dict(tile_format="tiff", pixel_type="grey16"))])
def test_each_kind_is_recognised_and_summarised(scans, kind, options):
    scan, truth = scans(f"find-{kind}-{len(options)}", kind=kind, **SMALL_GRID, **options)
    assert find_kind(scan) == kind
    source = read_source(scan)
    assert source.kind == kind and source.notes == []
    images = sum(len(p.files) for p in truth.positions)
    expected = {"smart-stack": f"smart-stack scan, {images} images at 6 positions",
                "flat": f"flat OFM scan, {images} images at 6 positions",
                "tileconfig": "TileConfiguration folder, 6 tiles in TileConfiguration.txt (grey16 TIFF)"}[kind]
    assert source.summary == expected


def test_a_folder_of_no_kind_says_what_was_looked_for(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = _cli_error(capsys, "collect", tmp_path / "empty")
    assert line.endswith(NOT_A_SCAN) and "TileConfiguration.txt" in line and "OFM metadata" in line
    assert "scan folder not found" in _cli_error(capsys, "stitch", tmp_path / "nope")


def test_smart_stack_wins_over_jpegs_at_the_top_with_a_note(copy_scan):
    scan, truth = copy_scan("mixed", **SMALL_GRID, planes=2)
    p = truth.positions[0]
    stray = scan / "stray.jpeg"
    shutil.copyfile(scan / p.folder / p.files[0], stray)  # an OFM JPEG directly in the scan folder
    source = read_source(scan)
    assert source.kind == "smart-stack" and len(source.scan.positions) == 6
    assert source.notes == [f"{stray}: ignored (a JPEG directly in a smart-stack scan folder)"]
    result = collect(scan)
    assert result.kind == "smart-stack" and len(result.tiles) == 6 and source.notes[0] in result.notes


def test_flat_wins_over_a_tile_configuration_beside_it(copy_scan):
    scan, truth = copy_scan("flat-tc", kind="flat", **SMALL_GRID)
    write_tile_configuration(scan / "TileConfiguration.txt", [p.files[0] for p in truth.positions],
                             np.zeros((6, 2)))
    source = read_source(scan)
    assert source.kind == "flat" and "give it as layout" in source.notes[0]
    assert read_source(scan, layout=scan / "TileConfiguration.txt").kind == "tileconfig"


def test_registered_files_and_use_do_not_confuse_recognition(copy_scan):
    scan, truth = copy_scan("tc-again", kind="tileconfig", tile_format="jpeg", **SMALL_GRID)
    first = collect(scan)  # use/ now holds JPEG tiles and a TileConfiguration.txt
    names, xy = read_tile_configuration(scan / "TileConfiguration.txt")
    write_tile_configuration(scan / "TileConfiguration.registered.txt", names, xy + 50)
    assert find_kind(scan) == "tileconfig"
    again = collect(scan)
    assert again.kind == "tileconfig" and again.layout == f"positions in {scan / 'TileConfiguration.txt'}"
    np.testing.assert_allclose(again.positions, first.positions)


def test_fijis_registered_file_alone_is_not_a_layout(copy_scan, capsys):
    scan, _ = copy_scan("tc-registered", kind="tileconfig", tile_format="tiff", **SMALL_GRID)
    (scan / "TileConfiguration.txt").rename(scan / "TileConfiguration.registered.txt")
    assert _cli_error(capsys, "collect", scan) == f"ofm-tiling: error: {scan}: {NOT_A_SCAN}"


# --- collecting -------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "pixel_type", "fmt", "planes"), [
    ("smart-stack", "rgb8", "jpeg", 3), ("smart-stack", "grey8", "jpeg", 2), ("flat", "rgb8", "jpeg", 1),
    ("flat", "rgb8", "jpeg", 3), ("flat", "grey8", "jpeg", 1), ("tileconfig", "rgb8", "jpeg", 1),
    ("tileconfig", "grey8", "png", 1), ("tileconfig", "rgb8", "tiff", 1), ("tileconfig", "grey16", "png", 1),
    ("tileconfig", "grey16", "tiff", 1)])
def test_collect_copies_every_kind_byte_for_byte_with_its_positions(copy_scan, kind, pixel_type, fmt, planes):
    scan, truth = copy_scan(f"c-{kind}-{pixel_type}-{fmt}-{planes}", kind=kind, pixel_type=pixel_type,
                            tile_format=fmt, planes=planes, **SMALL_GRID)
    before = snapshot(scan)
    result = collect(scan)
    assert snapshot(scan) == before
    assert (result.kind, result.pixel_type, result.tile_shape) == (kind, pixel_type, truth.tile_shape)
    suffix = {"jpeg": ".jpeg", "png": ".png", "tiff": ".tif"}[fmt]
    assert result.names == [f"{k:02d}{suffix}" for k in range(6)]
    by_file = {_central(truth, p): p for p in truth.positions}
    # The tagged plane of each position, each position once.
    chosen = [by_file[t.source.relative_to(scan).as_posix()] for t in result.tiles]
    assert len({p.index for p in chosen}) == 6
    for tile, path in zip(result.tiles, result.paths):
        assert path.read_bytes() == (scan / tile.source.relative_to(scan)).read_bytes()
    names, xy = read_tile_configuration(result.tile_configuration)
    assert names == result.names
    if kind == "tileconfig":  # the file's own positions, in its order
        listed, listed_xy = read_tile_configuration(scan / "TileConfiguration.txt")
        assert [t.source.name for t in result.tiles] == listed
        np.testing.assert_allclose(xy, listed_xy, atol=1e-3)
    else:  # stage positions through the camera-stage mapping: the nominal grid of the truth
        assert offset_free_error(xy, [p.nominal_xy for p in chosen]) < 0.01


def test_flat_positions_without_stage_metadata_take_the_grid(copy_scan):
    scan, truth = copy_scan("flat-grid", kind="flat", **SMALL_GRID)
    for p in truth.positions:  # strip the metadata: plain JPEGs of another camera
        path = scan / p.files[0]
        from PIL import Image
        with Image.open(path) as im:
            im.save(path.with_name("plain-" + path.name), quality=95)
        path.unlink()
    with pytest.raises(OfmTilingError, match="no stage position"):
        collect(scan)
    result = collect(scan, grid=(3, 2), overlap=0.3)
    assert result.kind == "flat" and result.layout.startswith("grid 3x2")
    np.testing.assert_allclose(read_tile_configuration(result.tile_configuration)[1][4], [320 * 0.7, 240 * 0.7])


def test_grid_overrides_a_tile_configuration(copy_scan):
    scan, _ = copy_scan("tc-grid", kind="tileconfig", tile_format="png", **SMALL_GRID)
    result = collect(scan, grid=(3, 2), overlap=0.25)
    _, xy = read_tile_configuration(result.tile_configuration)
    np.testing.assert_allclose(xy[:4], [[0, 0], [240, 0], [480, 0], [0, 180]])


def test_a_layout_kept_elsewhere_names_tiles_relative_to_the_folder(copy_scan, tmp_path, capsys):
    scan, truth = copy_scan("tc-elsewhere", kind="tileconfig", tile_format="png", **SMALL_GRID)
    layout = tmp_path / "layouts" / "mine.txt"
    layout.parent.mkdir()
    (scan / "TileConfiguration.txt").rename(layout)
    assert NOT_A_SCAN in _cli_error(capsys, "collect", scan)
    assert main(["collect", str(scan), "--layout", str(layout), "-q"]) == 0
    assert read_tile_configuration(scan / "use" / "TileConfiguration.txt")[0] == [f"{k:02d}.png" for k in range(6)]
    assert "--layout: names no file" in _cli_error(capsys, "stitch", scan, "--layout", tmp_path / "nope.txt")
    with pytest.raises(OptionError, match="^layout names no file"):
        collect(scan, layout=tmp_path / "nope.txt")
    result = stitch(scan, layout=layout, check_focus=False)
    assert result.collection.kind == "tileconfig"
    assert placement_errors(result.positions, truth.true_xy_array()).max() <= 1.0


@pytest.mark.parametrize(("line", "says"), [
    ("missing.png; ; (0.0, 0.0)", "line 5 names missing.png, which is not in"),
    ("tile_001.png; ; (0.0, 0.0)", "line 7 names tile_001.png, already named on line 5"),
    ("notes.txt; ; (0.0, 0.0)", "line 5 names notes.txt: tiles must be .jpg, .jpeg, .png, .tif or .tiff files"),
    ("tile_001.png; (0.0, 0.0)", "line 5 is not 'name; ; (x, y)'")])
def test_a_bad_tile_configuration_line_is_one_line_naming_file_and_line(copy_scan, capsys, line, says):
    scan, _ = copy_scan("tc-bad", kind="tileconfig", tile_format="png", **SMALL_GRID)
    layout = scan / "TileConfiguration.txt"
    text = layout.read_text().splitlines()
    (scan / "notes.txt").write_text("hello")
    layout.write_text("\n".join(text[:4] + [line] + text[4:]) + "\n")
    error = _cli_error(capsys, "collect", scan)
    assert error.startswith(f"ofm-tiling: error: {layout}: ") and says in error


def test_damaged_and_mismatched_tiles_are_one_line_errors(copy_scan, capsys):
    scan, truth = copy_scan("tc-damaged", kind="tileconfig", tile_format="tiff", pixel_type="grey8", **SMALL_GRID)
    bad = scan / truth.positions[3].files[0]
    good = bad.read_bytes()
    bad.write_bytes(b"not an image at all")
    assert _cli_error(capsys, "stitch", scan) == f"ofm-tiling: error: {bad}: not a readable JPEG, PNG or TIFF image " \
                                                 "(damaged?)"
    import tifffile
    tifffile.imwrite(bad, np.zeros((240, 320), np.uint16))
    assert "pixels are grey16 but" in _cli_error(capsys, "collect", scan)
    bad.write_bytes(good)
    assert main(["collect", str(scan), "-q", "--focus", "edf"]) == 2  # no stacks to fuse: a one-line refusal
    assert "'edf' needs a stack of images" in capsys.readouterr().err


def test_a_damaged_jpeg_in_a_flat_scan_is_left_out_with_a_note(copy_scan):
    scan, truth = copy_scan("flat-damaged", kind="flat", planes=2, **SMALL_GRID)
    p = truth.positions[2]
    other = next(f for f in p.files if f != p.central_file)
    (scan / other).write_bytes(b"\xff\xd8garbage")
    result = collect(scan)
    assert len(result.tiles) == 6 and any(n.startswith(f"{scan / other}: ignored (damaged JPEG") for n in result.notes)
    with pytest.raises(OfmTilingError, match="damaged JPEG"):
        collect(scan, strict=True)


# --- stitching --------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "pixel_type", "fmt"), [
    ("flat", "rgb8", "jpeg"), ("flat", "grey8", "jpeg"), ("tileconfig", "rgb8", "jpeg"),
    ("tileconfig", "grey8", "png"), ("tileconfig", "rgb8", "tiff"), ("tileconfig", "grey8", "tiff")])
def test_every_kind_stitches_to_the_smart_stack_targets(copy_scan, kind, pixel_type, fmt):
    """The targets of tests/test_stitch.py: median error <= 0.3 px, max <= 1 px, from stage errors > 10 px."""
    scan, truth = copy_scan(f"s-{kind}-{pixel_type}-{fmt}", kind=kind, pixel_type=pixel_type, tile_format=fmt,
                            grid=(4, 3), seed=11)
    before = snapshot(scan)
    result = stitch(scan)
    assert snapshot(scan) == before
    c = result.collection
    assert (c.kind, c.pixel_type) == (kind, pixel_type)
    by_file = {_central(truth, p): p.index for p in truth.positions}
    truth_xy = truth.true_xy_array()[[by_file[t.source.relative_to(scan).as_posix()] for t in c.tiles]]
    err = placement_errors(result.positions, truth_xy)
    stage_err = placement_errors(c.positions, truth_xy)
    assert np.median(err) <= 0.3 and err.max() <= 1.0 and stage_err.max() > 10, err
    assert result.mosaic.stat().st_size > 0


def test_pixel_type_is_that_of_the_tiles_in_use(copy_scan):
    """Grey smart-stack planes are grey8; an all-in-focus fusion writes colour JPEGs, so rgb8."""
    scan, _ = copy_scan("grey-edf", pixel_type="grey8", planes=3, **SMALL_GRID)
    assert collect(scan).pixel_type == "grey8"
    assert collect(scan, focus="edf").pixel_type == "rgb8"
