import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import piexif
import pytest
from conftest import snapshot
from PIL import Image

from ofm_tiling.cli import main
from ofm_tiling.collect import collect, collect_into, tile_name_width
from ofm_tiling.errors import OfmTilingError
from ofm_tiling.scan import read_scan
from ofm_tiling.tileconfig import read_tile_configuration


def offset_free_error(a, b):
    d = np.asarray(a) - np.asarray(b)
    return np.abs(d - d.mean(axis=0)).max()


def check_collection(scan, truth, result):
    """Tiles are byte-identical copies of the truly central images, in capture order, at stage positions."""
    central = truth.central_paths(scan)
    width = tile_name_width(len(central))
    assert [t.name for t in result.tiles] == [f"{k:0{width}d}.jpeg" for k in range(len(central))]
    for k, src in enumerate(central):
        assert (result.use_dir / result.tiles[k].name).read_bytes() == src.read_bytes()
        assert result.tiles[k].source == src
    names, pos = read_tile_configuration(result.use_dir / "TileConfiguration.txt")
    assert names == [t.name for t in result.tiles]
    nominal = truth.stage_to_canvas_xy(truth.stage_xy_array())
    assert offset_free_error(pos, nominal) < 0.01
    assert offset_free_error(pos, truth.true_xy_array()) <= 2 * truth.stage_error_px + 1
    assert pos.min(axis=0).tolist() == [0.0, 0.0]
    rows = list(csv.DictReader((result.use_dir / "tiles.csv").open()))
    assert [r["tile"] for r in rows] == names
    for r, p in zip(rows, truth.positions):
        assert r["source"] == f"{p.folder}/{p.central_file}"
        assert (float(r["stage_x"]), float(r["stage_y"])) == tuple(map(float, p.stage_xyz[:2]))
        assert r["capture_time"]


@pytest.mark.parametrize("layout,prefix,style", [("v2", False, "raster"), ("v3", True, "snake"),
                                                 ("v3-slash", False, "raster"), ("v2", True, "snake")])
def test_collect_layouts(copy_scan, layout, prefix, style):
    scan, truth = copy_scan(f"{layout}-{prefix}-{style}", layout=layout, usercomment_prefix=prefix, style=style,
                            grid=(4, 3))
    before = snapshot(scan)
    result = collect(scan)
    check_collection(scan, truth, result)
    assert result.order == "capture time"
    assert all(t.reason == "tagged central_image" for t in result.tiles)
    assert snapshot(scan) == before  # nothing outside use/ changed, not even a file time


def test_rerun_gives_the_same_use_and_removes_strays(copy_scan):
    scan, truth = copy_scan("v2-rerun", grid=(3, 2))
    first = collect(scan)
    listing = sorted(p.name for p in first.use_dir.iterdir())
    contents = {n: (first.use_dir / n).read_bytes() for n in listing}
    (first.use_dir / "99.jpeg").write_bytes(b"stray from an earlier run")
    second = collect(scan)
    assert sorted(p.name for p in second.use_dir.iterdir()) == listing
    assert {n: (second.use_dir / n).read_bytes() for n in listing} == contents
    assert not [p for p in scan.iterdir() if p.name.startswith(".use")]  # no temporary folders left


def test_file_times_are_not_used_for_order(copy_scan):
    scan, truth = copy_scan("v2-mtimes", grid=(3, 3), scramble_mtimes=True)
    central = truth.central_paths(scan)
    # Make file times run exactly backwards: an mtime-sorting tool would reverse the scan.
    for k, p in enumerate(central):
        os.utime(p, (1e9 - k * 100, 1e9 - k * 100))
    check_collection(scan, truth, collect(scan))


def test_incomplete_scan(copy_scan, capsys):
    scan, truth = copy_scan("v2-incomplete", grid=(3, 2), incomplete=True)
    assert truth.failed_folder is not None
    assert main(["collect", str(scan)]) == 0
    out, err = capsys.readouterr()
    assert "incomplete" in out and truth.failed_folder in err
    report = (scan / "use" / "scan-failure.txt").read_text()
    assert truth.failed_folder in report and truth.failed_info["error"] in report
    assert len(list((scan / "use").glob("*.jpeg"))) == len(truth.positions)
    assert main(["collect", str(scan), "--strict"]) == 2
    assert "incomplete" in capsys.readouterr().err


def test_more_than_100_positions_use_three_digits(copy_scan):
    scan, truth = copy_scan("v2-big", grid=(11, 10), tile_shape=(48, 64), planes=3, stage_error_px=3.0)
    result = collect(scan)
    assert result.tiles[0].name == "000.jpeg" and result.tiles[-1].name == "109.jpeg"
    check_collection(scan, truth, result)


@pytest.mark.parametrize("kind", ["none", "several"])
def test_missing_or_contradictory_tags_fall_back_to_sharpest(copy_scan, caplog, kind):
    scan, truth = copy_scan(f"v2-mistag-{kind}", grid=(3, 2), mistag={1: kind, 4: kind})
    result = collect(scan)
    check_collection(scan, truth, result)  # the truly sharpest plane was found
    for k in (1, 4):
        expected = "no image tagged" if kind == "none" else "images tagged central_image"
        assert expected in result.tiles[k].reason and "sharpest" in result.tiles[k].reason
        assert any(truth.positions[k].folder in n and expected in n for n in result.notes)


def test_select_sharpest_ignores_a_wrong_tag(copy_scan):
    scan, truth = copy_scan("v2-wrongtag", grid=(3, 2), mistag={2: "wrong"})
    tagged = collect(scan, out=scan / "tagged")
    assert tagged.tiles[2].source.name == truth.positions[2].tagged_files[0] != truth.positions[2].central_file
    check_collection(scan, truth, collect(scan, select="sharpest"))


def test_link_makes_hard_links(copy_scan):
    scan, truth = copy_scan("v2-link", grid=(2, 2))
    result = collect(scan, link=True)
    for t in result.tiles:
        assert os.path.samefile(result.use_dir / t.name, t.source)


def test_grid_fallback_without_stage_metadata(copy_scan):
    scan, truth = copy_scan("v2-nostage", grid=(3, 2))
    for p in truth.positions:
        for f in p.files:
            _rewrite_comment(scan / p.folder / f, lambda d: d["instrument"]["state"].pop("stage"))
    assert main(["collect", str(scan)]) == 2
    result = collect(scan, grid=(3, 2), overlap=0.3)
    names, pos = read_tile_configuration(result.tile_configuration)
    np.testing.assert_allclose(pos[4], [320 * 0.7, 240 * 0.7])


# --- bad input: one line naming the file, exit code 2, no traceback ---------------------------

def _rewrite_comment(path: Path, change) -> None:
    exif = piexif.load(str(path))
    doc = json.loads(exif["Exif"][piexif.ExifIFD.UserComment].decode())
    change(doc)
    exif["Exif"][piexif.ExifIFD.UserComment] = json.dumps(doc).encode()
    piexif.insert(piexif.dump(exif), str(path))


def run_cli_error(capsys, *args):
    code = main(["collect", *map(str, args)])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ofm-tiling: error: ") and "Traceback" not in err, err
    return lines[0]


def test_missing_and_empty_scan_folders(tmp_path, capsys):
    assert "scan folder not found" in run_cli_error(capsys, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "no position folders" in run_cli_error(capsys, tmp_path / "empty")


def test_truncated_central_jpeg(copy_scan, capsys):
    scan, truth = copy_scan("v2-trunc", grid=(2, 2))
    p = scan / truth.positions[1].folder / truth.positions[1].central_file
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    line = run_cli_error(capsys, scan, "--strict")
    assert str(p) in line and "truncated" in line
    # Without --strict: the sharpest readable plane instead, with a note naming the damaged file.
    result = collect(scan)
    tile = result.tiles[1]
    assert tile.source.parent == p.parent and tile.source != p
    assert tile.source.name in _neighbours(truth.positions[1])  # the next sharpest planes
    assert any(str(p) in n and "truncated" in n for n in result.notes)
    assert any(truth.positions[1].folder in n and p.name in n and "damaged" in n for n in result.notes)


def _neighbours(pos) -> list[str]:
    """The planes next to the truly sharpest one."""
    k = pos.central_index
    return [pos.files[j] for j in (k - 1, k + 1) if 0 <= j < len(pos.files)]


def test_corrupt_jpeg_elsewhere_in_stack_is_a_note(copy_scan, caplog):
    scan, truth = copy_scan("v2-corrupt", grid=(2, 2))
    pos = truth.positions[0]
    other = next(f for f in pos.files if f != pos.central_file)
    (scan / pos.folder / other).write_bytes(b"\x00garbage" * 100)
    result = collect(scan)
    assert any(other in n and "not a JPEG" in n and "skipped" in n for n in result.notes)
    check_collection(scan, truth, result)
    with pytest.raises(OfmTilingError, match=f"{other}: not a JPEG"):
        collect(scan, strict=True)


def test_corrupt_tagged_jpeg(copy_scan, capsys):
    scan, truth = copy_scan("v2-corrupt2", grid=(2, 2))
    pos = truth.positions[3]
    data = bytearray((scan / pos.folder / pos.central_file).read_bytes())
    p = scan / pos.folder / pos.central_file
    p.write_bytes(b"\xff\xd8\xff\xe1\x00\x01" + bytes(data[6:]))  # segment length 1 is impossible
    line = run_cli_error(capsys, scan, "--strict")
    assert pos.folder in line
    # Without --strict: the sharpest readable plane instead, with a note naming the damaged file.
    result = collect(scan)
    tile = next(t for t in result.tiles if t.position == pos.folder)
    assert tile.source.parent == p.parent and tile.source != p
    assert tile.source.name in _neighbours(pos)  # the next sharpest planes
    assert any(str(p) in n and "damaged" in n for n in result.notes)


def test_usercomment_not_json(copy_scan, capsys):
    scan, truth = copy_scan("v2-badjson", grid=(2, 2), mistag={2: "bad_json"})
    line = run_cli_error(capsys, scan)
    assert truth.positions[2].folder in line and "not JSON" in line


def test_mixed_image_sizes(copy_scan, capsys):
    scan, truth = copy_scan("v2-sizes", grid=(2, 2))
    p = scan / truth.positions[3].folder / truth.positions[3].central_file
    exif = Image.open(p).info["exif"]
    Image.open(p).resize((300, 200)).save(p, exif=exif)
    line = run_cli_error(capsys, scan)
    assert str(p) in line and "300x200" in line


def test_disagreeing_calibration(copy_scan, capsys):
    scan, truth = copy_scan("v2-csm", grid=(2, 2))
    pos = truth.positions[2]
    for f in pos.files:
        _rewrite_comment(scan / pos.folder / f, lambda d: d["instrument"]["settings"]["extensions"][
            "org.openflexure.camera_stage_mapping"].update(image_to_stage_displacement=[[1, 0], [0, 1]]))
    line = run_cli_error(capsys, scan)
    assert pos.folder in line and "disagrees" in line


def test_unwritable_output(copy_scan, capsys, tmp_path):
    scan, truth = copy_scan("v2-unwritable", grid=(2, 2))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = run_cli_error(capsys, scan, "--out", blocker / "use")
    assert "a-file" in line
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("mine")
    line = run_cli_error(capsys, scan, "--out", tmp_path / "precious")
    assert "not made by ofm-tiling" in line and (tmp_path / "precious" / "notes.txt").read_text() == "mine"


def test_console_script_runs_the_example(tmp_path):
    exe = shutil.which("ofm-tiling") or pytest.fail("the ofm-tiling console script is not installed")
    subprocess.run([exe, "example", str(tmp_path / "ex"), "--grid", "2x2", "--tile", "160x120", "-q"], check=True)
    r = subprocess.run([exe, "collect", str(tmp_path / "ex")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    tiles = sorted(p.name for p in (tmp_path / "ex" / "use").glob("*.jpeg"))
    assert tiles == ["00.jpeg", "01.jpeg", "02.jpeg", "03.jpeg"]


# --- issue 12: failure reports, plane order, unreadable metadata ------------------------------

def test_failure_data_json_is_shown_whole(copy_scan, capsys):
    scan, truth = copy_scan("v2-incomplete", grid=(3, 2), incomplete=True)
    doc = {"outcome": "stopped", "cause": {"kind": "Autofocus", "trace": ["z=120 no peak", "z=140 no peak"]},
           "attempts": 3, "retry": None}
    (scan / truth.failed_folder / "data.json").write_text(json.dumps(doc))
    assert main(["collect", str(scan)]) == 0
    err = capsys.readouterr().err
    text = (scan / "use" / "scan-failure.txt").read_text()
    for shown in (text, err):
        for expected in ("outcome: stopped", "cause:", "kind: Autofocus", "- z=120 no peak", "- z=140 no peak",
                         "attempts: 3", "retry: null", truth.failed_folder):
            assert expected in shown, (expected, shown)
    assert main(["collect", str(scan), "--strict"]) == 2
    line = capsys.readouterr().err
    assert "cause.kind: Autofocus" in line and "cause.trace[1]: z=140 no peak" in line


def _rename_planes(folder: Path, names: list[str]) -> list[Path]:
    """Rename the JPEGs of a position (in stage-z order) to `names`; returns the new paths."""
    planes = sorted(folder.glob("*.jpeg"), key=lambda p: read_scan_z(p))
    temp = [p.rename(p.with_name(f"tmp-{k}.tmp")) for k, p in enumerate(planes)]
    return [t.rename(folder / n) for t, n in zip(temp, names)]


def read_scan_z(path: Path) -> float:
    from ofm_tiling.metadata import read_metadata
    return read_metadata(path).stage[2]


@pytest.mark.parametrize("source", ["z", "time", "name"])
def test_planes_are_ordered_by_z_then_time_then_number(copy_scan, source):
    scan, truth = copy_scan("v2-order", grid=(2, 1))
    folder = scan / truth.positions[0].folder
    names = [f"{k}.jpeg" for k in range(9, 18)]  # text order would put 9 last
    paths = _rename_planes(folder, names[::-1] if source == "z" else names)
    if source != "z":
        for p in paths:  # no z: every plane at the same height
            _rewrite_comment(p, lambda d: d["instrument"]["state"]["stage"]["position"].update(z=0))
    if source == "name":
        for p in paths:
            _rewrite_comment(p, lambda d: d["image"].pop("time"))
            exif = piexif.load(str(p))
            for ifd in ("0th", "Exif"):
                for tag in (piexif.ImageIFD.DateTime, piexif.ExifIFD.DateTimeOriginal):
                    exif[ifd].pop(tag, None)
            piexif.insert(piexif.dump(exif), str(p))
    position = next(p for p in read_scan(scan).positions if p.folder == folder)
    expected = [p.name for p in paths]  # z order, also of capture time
    assert [im.path.name for im in position.images] == expected
    result = collect(scan)
    tile = next(t for t in result.tiles if t.position == folder.name)
    assert tile.plane == truth.positions[0].central_index  # the plane index counts in focus order


def test_unreadable_usercomment_names_the_file_and_the_plane_used(copy_scan):
    scan, truth = copy_scan("v2-onebadjson", grid=(2, 2))
    pos = truth.positions[1]
    p = scan / pos.folder / pos.central_file
    exif = piexif.load(str(p))
    exif["Exif"][piexif.ExifIFD.UserComment] = b'{"image": {"tags": ["central_im'
    piexif.insert(piexif.dump(exif), str(p))
    result = collect(scan)
    note = next(n for n in result.notes if pos.folder in n and "unreadable" in n)
    assert pos.central_file in note and "not JSON" in note
    tile = next(t for t in result.tiles if t.position == pos.folder)
    assert f"plane {tile.plane} ({tile.source.name})" in note
    assert "no image tagged" not in note
    # another position: an untagged plane's comment is damaged; the tagged plane is used, and said so
    other = truth.positions[2]
    bad = next(f for f in other.files if f != other.central_file)
    exif = piexif.load(str(scan / other.folder / bad))
    exif["Exif"][piexif.ExifIFD.UserComment] = b"\x00\xffnot json"
    piexif.insert(piexif.dump(exif), str(scan / other.folder / bad))
    result = collect(scan)
    tile = next(t for t in result.tiles if t.position == other.folder)
    assert tile.source.name == other.central_file and tile.reason == "tagged central_image"
    note = next(n for n in result.notes if other.folder in n and "unreadable" in n)
    assert bad in note and f"plane {tile.plane} ({other.central_file}), the tagged central_image" in note


def test_collect_into_writes_a_staging_folder_and_swaps_nothing(copy_scan, tmp_path):
    scan, truth = copy_scan("v2-into", grid=(3, 2))
    before = snapshot(scan, exclude=())
    staging = tmp_path / "staging"
    staging.mkdir()
    result = collect_into(staging, scan)
    assert result.use_dir == staging and snapshot(scan, exclude=()) == before
    check_collection(scan, truth, result)
    with pytest.raises(OfmTilingError, match="focus must be 'central' or 'edf'"):
        collect_into(staging, scan, focus="stacked")


def test_a_folder_of_foreign_images_inside_the_scan_is_ignored_with_a_note(copy_scan, capsys):
    """Issue 11: Fiji's macro saved SCAN/stitched-fiji/mosaic.jpg; collecting then failed on its size."""
    scan, truth = copy_scan("foreign", grid=(3, 2))
    foreign = scan / "stitched-fiji"
    foreign.mkdir()
    Image.new("RGB", (2006, 1176), (200, 150, 200)).save(foreign / "mosaic.jpg", quality=90)
    assert main(["collect", str(scan)]) == 0
    err = capsys.readouterr().err
    assert f"{foreign}: ignored (its images are 2006x1176, the scan's are 320x240: not part of this scan)" in err
    result_names = sorted(p.name for p in (scan / "use").glob("*.jpeg"))
    assert len(result_names) == 6  # every position, nothing from the foreign folder
    central = truth.central_paths(scan)
    assert sorted(p.read_bytes() for p in (scan / "use").glob("*.jpeg")) == sorted(p.read_bytes() for p in central)
