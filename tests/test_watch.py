"""Watch: a scan written position by position while `watch` follows it, ending as `stitch` would."""
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import placement_errors
from PIL import Image

from ofm_tiling.cli import main
from ofm_tiling.paircache import PAIR_CACHE
from ofm_tiling.stitch import stitch
from ofm_tiling.watch import ScanFollower, watch

GRID = (4, 3)


def capture_order(scan: Path) -> list[Path]:
    """Position folders in the order the microscope wrote them (their data.json times)."""
    folders = [p for p in scan.iterdir() if (p / "data.json").is_file()]
    return sorted(folders, key=lambda p: json.loads((p / "data.json").read_text())["time"])


def write_slowly(source: Path, target: Path, *, chunks: int = 3, pause: float = 0.03) -> None:
    """Copy one file in chunks with pauses, as a camera saving over a network would."""
    data = source.read_bytes()
    step = -(-len(data) // chunks)
    with open(target, "wb") as fh:
        for k in range(0, len(data), step):
            fh.write(data[k:k + step])
            fh.flush()
            time.sleep(pause)
    shutil.copystat(source, target)


def microscope(source: Path, target: Path, *, between: float = 0.25) -> threading.Thread:
    """A background writer: position folders one at a time (images, then data.json), the scan's data.json last.
    The scan folder exists before `watch` starts, as when the microscope has begun a scan."""
    target.mkdir()

    def run() -> None:
        for folder in capture_order(source):
            (target / folder.name).mkdir()
            for image in sorted(folder.glob("*.jpeg")):
                write_slowly(image, target / folder.name / image.name)
            write_slowly(folder / "data.json", target / folder.name / "data.json", chunks=1, pause=0)
            time.sleep(between)
        write_slowly(source / "data.json", target / "data.json", chunks=1, pause=0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def mosaic_pixels(out: Path) -> np.ndarray:
    return tifffile.imread(out / "mosaic.ome.tif", level=0)


def test_watch_follows_a_growing_scan_and_ends_as_stitch(scans, copy_scan, tmp_path):
    source, truth = scans("watch", grid=GRID, planes=2)
    live = tmp_path / "live"
    writer = microscope(source, live)
    refreshes = []

    def seen(r) -> None:  # the live outputs are there and readable at every refresh
        with Image.open(live / "stitched" / "preview.jpg") as im, Image.open(live / "stitched" / "layout.png") as lay:
            refreshes.append((r.tiles, r.seconds, im.size, lay.size))

    result = watch(live, poll=0.1, on_refresh=seen, check_focus=False)
    writer.join()
    tiles = [n for n, *_ in refreshes]
    assert len(refreshes) >= 3 and tiles == sorted(set(tiles)) and tiles[-1] <= GRID[0] * GRID[1]
    assert all(s < 10 for _, s, *_ in refreshes)
    print("refresh seconds by positions placed:", [(n, round(s, 3)) for n, s, *_ in refreshes])

    reference_scan, _ = copy_scan("watch", grid=GRID, planes=2)
    reference = stitch(reference_scan, check_focus=False)
    assert result.collection.names == reference.collection.names
    assert np.array_equal(result.positions, reference.positions)
    assert np.max(placement_errors(result.positions, truth.true_xy_array())) < 2.0
    assert np.array_equal(mosaic_pixels(result.out_dir), mosaic_pixels(reference.out_dir))
    assert (result.out_dir / PAIR_CACHE).is_file() and (result.out_dir / "preview.jpg").is_file()
    # Nothing in the scan was written besides use/ and the output folder.
    for folder in capture_order(source):
        for f in folder.iterdir():
            assert (live / folder.name / f.name).read_bytes() == f.read_bytes()
    assert sorted(p.name for p in live.iterdir()) == sorted([p.name for p in source.iterdir()
                                                             if not p.name.startswith("truth.")] + ["use", "stitched"])


def test_follower_waits_for_whole_files_and_a_written_data_json(scans, tmp_path):
    source, _ = scans("watch", grid=GRID, planes=2)
    first = capture_order(source)[0]
    live = tmp_path / "live"
    (live / first.name).mkdir(parents=True)
    follower = ScanFollower(live)
    images = sorted(first.glob("*.jpeg"))
    for image in images:
        shutil.copyfile(image, live / first.name / image.name)
    assert follower.poll() == ([], None) and follower.poll() == ([], None)  # no data.json yet
    shutil.copyfile(first / "data.json", live / first.name / "data.json")
    truncated = live / first.name / images[0].name
    truncated.write_bytes(images[0].read_bytes()[:-2])  # no end-of-image marker yet
    follower.poll()
    assert follower.poll()[0] == []
    shutil.copyfile(images[0], truncated)
    assert follower.poll()[0] == []  # grew since the last poll
    positions, over = follower.poll()
    assert [p.name for p in positions] == [first.name] and over is None
    shutil.copyfile(source / "data.json", live / "data.json")
    assert "complete" in follower.poll()[1]


def test_a_failed_position_ends_the_watch_and_the_stitch_reports_it(scans, tmp_path):
    source, _ = scans("watch-failed", grid=(3, 2), planes=1, incomplete=True)
    live = tmp_path / "live"
    shutil.copytree(source, live)
    (live / "data.json").unlink()  # only the failed position's report says the scan is over
    result = watch(live, poll=0.05, check_focus=False)
    assert len(result.collection.failed) == 1 and len(result.collection.tiles) == 5


def test_stop_event_ends_the_watch_and_stitches_what_is_there(scans, tmp_path):
    source, _ = scans("watch", grid=GRID, planes=2)
    live = tmp_path / "live"
    shutil.copytree(source, live)
    (live / "data.json").unlink()  # the scan never says it finished
    stop = threading.Event()
    result = watch(live, poll=0.05, stop=stop, on_refresh=lambda r: stop.set(), check_focus=False)
    assert len(result.collection.tiles) == GRID[0] * GRID[1]


def test_watch_command(scans, tmp_path, capsys):
    source, _ = scans("watch", grid=GRID, planes=2)
    live = tmp_path / "live"
    shutil.copytree(source, live)
    assert main(["watch", str(live), "--poll", "0.05", "--no-focus-check"]) == 0
    out, err = capsys.readouterr()
    assert "the scan's data.json says complete" in err  # a finished scan is stitched at once
    assert f"Stitched {GRID[0] * GRID[1]} tiles" in out and (live / "stitched" / "mosaic.ome.tif").is_file()
    assert main(["watch", str(live), "--poll", "0"]) == 2
    assert "--poll: must be more than 0 seconds" in capsys.readouterr().err
    assert main(["watch", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "missing: scan folder not found" in err and "Traceback" not in err


@pytest.mark.parametrize("status", ["complete", "failed"])
def test_scan_status_from_data_json(tmp_path, status):
    (tmp_path / "data.json").write_text(json.dumps({"status": status}))
    assert status in ScanFollower(tmp_path).poll()[1]


def test_a_position_still_under_way_is_no_failure(tmp_path):
    (tmp_path / "0_0").mkdir()
    (tmp_path / "0_0" / "data.json").write_text(json.dumps({"status": "running"}))
    assert ScanFollower(tmp_path).poll() == ([], None)
    (tmp_path / "0_0" / "data.json").write_text(json.dumps({"status": "failed", "error": "stage stuck"}))
    assert "stage stuck" in ScanFollower(tmp_path).poll()[1]
