"""End-to-end: generated scans with ground truth through `stitch` (collect → register → solve → fuse → write)."""
import json
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import tifffile
from conftest import placement_errors, snapshot
from PIL import Image

from ofm_tiling.cli import main
from ofm_tiling.stitch import stitch
from ofm_tiling.tileconfig import read_tile_configuration


def errors_vs_truth(positions, truth_xy, reference):
    """Distance of each tile to the truth after removing the one global offset fitted on `reference` tiles."""
    d = np.asarray(positions, float) - truth_xy
    d -= d[reference].mean(axis=0)
    return np.hypot(d[:, 0], d[:, 1])


def psnr(a, b):
    mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse)


def mosaic_psnr(result, scan, truth, mosaic=None):
    """PSNR of the stitched mosaic against the truth canvas, over the pixels the mosaic covers."""
    mosaic = tifffile.imread(result.mosaic) if mosaic is None else mosaic
    canvas = np.asarray(Image.open(scan / truth.truth_png).convert("RGB"))
    offset = np.round((truth.true_xy_array() - result.positions).mean(0)).astype(int)  # canvas = mosaic + offset
    h, w = mosaic.shape[:2]
    x0, y0 = offset
    region = canvas[y0:y0 + h, x0:x0 + w]
    covered = mosaic[: region.shape[0], : region.shape[1]].sum(axis=2) > 0
    return psnr(mosaic[: region.shape[0], : region.shape[1]][covered], region[covered]), canvas


def test_accuracy_with_blank_tiles(copy_scan):
    blank = (6, 13)
    scan, truth = copy_scan("acc", grid=(5, 4), blank_tiles=blank, stage_error_px=25.0, seed=3)
    before = snapshot(scan)
    result = stitch(scan)
    assert snapshot(scan) == before  # only use/ and stitched/ were written
    truth_xy = truth.true_xy_array()
    textured = np.array([not p.blank for p in truth.positions])
    err = errors_vs_truth(result.positions, truth_xy, textured)
    assert np.median(err[textured]) <= 0.3 and err[textured].max() <= 1.0, err
    stage_err = errors_vs_truth(result.collection.positions, truth_xy, textured)
    for k in blank:
        assert err[k] <= stage_err[k] + 0.5, (k, err[k], stage_err[k])
    names, registered = read_tile_configuration(result.registered)
    assert names == result.collection.names
    np.testing.assert_allclose(registered, result.positions, atol=1e-3)

    report = json.loads(result.report.read_text())
    assert len(report["tiles"]) == 20 and report["links"]
    assert all("accepted" in link and "correlation" in link for link in report["links"])
    with Image.open(result.layout_png) as im:
        assert im.width >= 800 and len(np.unique(np.asarray(im.convert("L")))) > 10


def test_camera_sized_tiles_take_the_eighth_scale_route(scans, tmp_path):
    """8 MP tiles, as the OFM camera saves them: coarse search at 1/8, refined at full resolution."""
    scan, truth = scans("8mp", grid=(3, 2), tile_shape=(2464, 3280), planes=1, source="procedural",
                        stage_error_px=25.0, workers=2)
    result = stitch(scan, out=tmp_path / "out", use=tmp_path / "use", check_focus=False)
    report = json.loads(result.report.read_text())
    assert report["thresholds"]["coarse_scale"] == 8
    assert all(link["accepted"] for link in report["links"])
    truth_xy = truth.true_xy_array()
    err = errors_vs_truth(result.positions, truth_xy, np.ones(len(truth_xy), bool))
    stage_err = errors_vs_truth(result.collection.positions, truth_xy, np.ones(len(truth_xy), bool))
    print(f"8 MP tiles: error median {np.median(err):.3f} px, max {err.max():.3f} px (stage {stage_err.max():.1f} px)")
    assert np.median(err) <= 0.3 and err.max() <= 1.0 and stage_err.max() > 10


def test_two_groups_joined_only_through_blank_tiles(copy_scan):
    # The middle column is glass: nothing links the left two columns to the right two.
    blank = (2, 7, 12)
    scan, truth = copy_scan("islands", grid=(5, 3), blank_tiles=blank, stage_error_px=20.0, seed=5)
    result = stitch(scan)
    truth_xy = truth.true_xy_array()
    left = [k for k in range(15) if k % 5 < 2]
    right = [k for k in range(15) if k % 5 > 2]
    for group in (left, right):
        err = errors_vs_truth(result.positions[group], truth_xy[group], np.ones(len(group), bool))
        assert err.max() <= 1.0, err  # each island is exact in itself
    # The islands stay apart where the stage put them: no collapse onto one another.
    gap = result.positions[right].mean(0) - result.positions[left].mean(0)
    true_gap = truth_xy[right].mean(0) - truth_xy[left].mean(0)
    assert np.hypot(*(gap - true_gap)) <= 2 * truth.stage_error_px


def test_ome_tiff_matches_truth_and_has_pixel_size(copy_scan):
    scan, truth = copy_scan("psnr", grid=(3, 3), pixel_size_um=0.42, focus_jitter=0, seed=7, subpixel=False)
    result = stitch(scan, compression="deflate")
    with tifffile.TiffFile(result.mosaic) as tif:
        assert tif.is_ome
        series = tif.series[0]
        mosaic = series.levels[0].asarray()
        assert len(series.levels) >= 2
        pixels = tif.ome_metadata
        assert 'PhysicalSizeX="0.42"' in pixels and 'PhysicalSizeY="0.42"' in pixels
    assert mosaic.shape[:2] == result.shape and mosaic.shape[2] == 3
    value, canvas = mosaic_psnr(result, scan, truth, mosaic)
    # The ceiling is what one tile achieves against the truth (sensor noise + JPEG): fusion may not lose more.
    th, tw = truth.tile_shape
    tiles = [psnr(np.asarray(Image.open(path).convert("RGB")), canvas[int(y):int(y) + th, int(x):int(x) + tw])
             for path, (x, y) in zip(result.collection.paths, truth.true_xy_array())]
    assert value > 25 and value >= min(tiles) - 0.5, (value, tiles)
    with Image.open(result.preview) as im:
        assert abs(im.width - min(2000, mosaic.shape[1])) <= 2


def test_one_tile_and_all_blank(copy_scan, capsys):
    scan, truth = copy_scan("one", grid=(1, 1))
    result = stitch(scan)
    tile = np.asarray(Image.open(result.collection.paths[0]).convert("RGB"))
    mosaic = tifffile.imread(result.mosaic)
    assert mosaic.shape == tile.shape and psnr(mosaic, tile) > 35

    scan, truth = copy_scan("blank", grid=(3, 2), blank_tiles=range(6))
    assert main(["stitch", str(scan)]) == 0
    err = capsys.readouterr().err
    assert "no pair of tiles could be registered" in err
    names, pos = read_tile_configuration(scan / "use" / "TileConfiguration.registered.txt")
    _, stage = read_tile_configuration(scan / "use" / "TileConfiguration.txt")
    np.testing.assert_allclose(pos - pos.min(0), stage - stage.min(0), atol=0.5)


def test_unwritable_output_leaves_nothing_half_written(copy_scan, capsys, tmp_path):
    scan, truth = copy_scan("unwritable", grid=(2, 2))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["stitch", str(scan), "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "file" in err[0] and "Traceback" not in err[0]
    assert not [p for p in scan.iterdir() if p.name.startswith(".")]


def test_rerun_replaces_outputs(copy_scan):
    scan, truth = copy_scan("rerun", grid=(2, 2))
    first = stitch(scan)
    (first.out_dir / "stale.txt").write_text("from an earlier run")
    second = stitch(scan)
    assert not (second.out_dir / "stale.txt").exists() and second.mosaic.exists()
    np.testing.assert_allclose(first.positions, second.positions)


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_scan(scans, tmp_path):
    """Peak RSS of a whole stitch run (in its own process) for 2 and 12 rows of tiles."""
    peaks, shapes = {}, {}
    for rows in (2, 12):
        # Wide enough that the ~2000 px preview comes from a reduced pyramid level.
        scan, truth = scans(f"mem{rows}", grid=(6, rows), tile_shape=(768, 1024), planes=1, source="procedural",
                            stage_error_px=10.0, workers=2)
        code = textwrap.dedent(f"""
            from ofm_tiling.stitch import stitch
            r = stitch({str(scan)!r}, out={str(tmp_path / f'out{rows}')!r}, use={str(tmp_path / f'use{rows}')!r})
            # VmHWM, not ru_maxrss: on Linux the latter carries the parent's peak across exec.
            status = open("/proc/self/status").read()
            print(r.shape[0], r.shape[1], int(status.split("VmHWM:")[1].split()[0]))
        """)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        h, w, kib = map(int, run.stdout.split()[-3:])
        peaks[rows], shapes[rows] = kib * 1024, (h, w)
    mosaic_growth = 3 * shapes[12][1] * (shapes[12][0] - shapes[2][0])  # bytes of RGB mosaic 10 more rows add
    # The ~2000 px wide preview is held whole while it is saved, so its own growth is allowed for.
    preview_growth = 3 * 2000 * (shapes[12][0] - shapes[2][0]) * 2000 / shapes[12][1]
    print(f"peak RSS: {peaks[2] / 2**20:.0f} MB for 2 rows, {peaks[12] / 2**20:.0f} MB for 12 rows; "
          f"mosaic grows by {mosaic_growth / 2**20:.0f} MB, preview by {preview_growth / 2**20:.0f} MB")
    assert peaks[12] - peaks[2] < 0.5 * mosaic_growth + preview_growth, peaks


@pytest.mark.parametrize("tilt,gain", [(6.0, 1.0), (0.0, -0.1)])
def test_all_in_focus_mosaic(copy_scan, tilt, gain):
    """A tilted sample is never sharp in one plane: the all-in-focus mosaic must beat the central one."""
    scan, truth = copy_scan(f"edf-{tilt}", grid=(3, 2), tilt=tilt, focus_jitter=0, subpixel=False, seed=11)
    central = stitch(scan, out=scan / "central", use=scan / "use-central", compression="deflate")
    edf = stitch(scan, out=scan / "edf", use=scan / "use-edf", focus="edf", compression="deflate")
    central_psnr, _ = mosaic_psnr(central, scan, truth)
    edf_psnr, _ = mosaic_psnr(edf, scan, truth)
    print(f"tilt {tilt}: central {central_psnr:.2f} dB, all-in-focus {edf_psnr:.2f} dB")
    assert edf_psnr >= central_psnr + gain, (edf_psnr, central_psnr)
    assert all("all-in-focus" in t.reason for t in edf.collection.tiles)


def test_report_flags_autofocus_failures(copy_scan):
    scan, truth = copy_scan("focus-report", grid=(3, 2), mistag={2: "wrong"}, blank_tiles=(4,))
    result = stitch(scan)
    focus = {row["position"]: row for row in json.loads(result.report.read_text())["extra"]["focus"]}
    assert len(focus) == 6 and all(len(row["curve"]) == truth.planes for row in focus.values())
    wrong = focus[truth.positions[2].folder]
    assert wrong["tagged_is_sharpest"] is False and wrong["message"]
    assert wrong["sharpest_plane"] == truth.positions[2].central_index
    assert focus[truth.positions[4].folder]["clear_peak"] is False
    textured = [focus[p.folder] for k, p in enumerate(truth.positions) if k not in (2, 4)]
    assert all(row["clear_peak"] and row["tagged_is_sharpest"] for row in textured)
    assert any(truth.positions[2].folder in n for n in result.notes)


# --- a killed run never changes the previous result; one run per scan -------------------------

def result_files(scan):
    """Bytes of every file of the previous result: use/ (with the registered layout) and stitched/."""
    return {p.relative_to(scan).as_posix(): p.read_bytes()
            for folder in ("use", "stitched") for p in sorted((scan / folder).rglob("*")) if p.is_file()}


def leftovers(scan):
    return sorted(p.name for p in scan.iterdir() if p.name.startswith("."))


class Run:
    """`ofm-tiling stitch` in its own process, its stderr read line by line as it comes."""

    def __init__(self, scan, *extra):
        self.proc = subprocess.Popen([sys.executable, "-m", "ofm_tiling.cli", "stitch", str(scan), *extra],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, condition, timeout=120.0):
        t0 = time.monotonic()
        while not condition():
            assert self.proc.poll() is None, f"the run ended before the moment to stop it: {self.lines}"
            assert time.monotonic() - t0 < timeout, self.lines
            time.sleep(0.005)

    def said(self, text):
        return lambda: any(text in line for line in self.lines)

    def stop(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        return self.proc.wait(60)


def staged(scan, name):
    """A file `name` (glob) inside this run's staging output folder exists."""
    return lambda: any(p.stat().st_size > 0 for p in scan.glob(f".stitched.tmp-*/{name}") if p.is_file())


def test_a_run_killed_at_any_moment_keeps_the_previous_result(copy_scan):
    scan, truth = copy_scan("killed", grid=(5, 4), tile_shape=(480, 640))
    assert main(["stitch", str(scan), "-q"]) == 0
    before = result_files(scan)
    assert "use/TileConfiguration.registered.txt" in before
    moments = {"collection": lambda r: r.said("collecting"),
               "registration": lambda r: r.said("registering"),
               "fusion": lambda r: r.said("fusing and writing"),
               "writing the mosaic": lambda r: staged(scan, ".mosaic.ome.tif.*.tmp"),
               "writing the report": lambda r: staged(scan, "stitching-report.json")}
    for moment, when in moments.items():
        run = Run(scan, "--no-focus-check")
        run.wait_for(when(run))
        assert run.stop() == -signal.SIGKILL, moment
        assert result_files(scan) == before, f"killed during {moment}: the previous result changed"
    assert any(name.startswith(".stitched.tmp-") for name in leftovers(scan))  # what SIGKILL leaves
    run = Run(scan, "--no-focus-check")  # Ctrl-C: cleans up at once
    run.wait_for(run.said("registering"))
    assert run.stop(signal.SIGINT) == 130
    assert result_files(scan) == before
    assert main(["stitch", str(scan), "-q"]) == 0  # the next run removes what killed runs left
    assert leftovers(scan) == []
    names, positions = read_tile_configuration(scan / "use" / "TileConfiguration.registered.txt")
    assert placement_errors(positions, truth.true_xy_array()).max() < 1.0


def test_one_run_per_scan(copy_scan):
    scan, truth = copy_scan("lock", grid=(4, 3), tile_shape=(480, 640))
    first = Run(scan)
    first.wait_for(first.said("registering"))
    second = subprocess.run([sys.executable, "-m", "ofm_tiling.cli", "stitch", str(scan)],
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    message = second.stderr.strip()
    assert "\n" not in message and "another ofm-tiling run is working on this scan" in message
    assert f"process {first.proc.pid} on " in message and ", started 20" in message
    waiting = subprocess.run([sys.executable, "-m", "ofm_tiling.cli", "stitch", str(scan), "--wait", "-q"],
                             capture_output=True, text=True, timeout=300)
    assert first.proc.wait(300) == 0
    assert waiting.returncode == 0, waiting.stderr
    assert leftovers(scan) == []
