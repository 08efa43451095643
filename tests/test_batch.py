"""Batch stitching: planning (memory and cores), a local batch, and a real Dask scheduler with two workers."""
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import placement_errors

import ofm_tiling
from ofm_tiling.batch import ScanOutcome, _receive, format_progress, format_summary, plan_local, run_dask, stitch_one
from ofm_tiling.batchplan import (
    BASE_BYTES,
    MEMORY_HEADROOM,
    band_columns,
    estimate_scan,
    peak_bytes,
    plan_batch,
)
from ofm_tiling.cli import main
from ofm_tiling.errors import OfmTilingError
from ofm_tiling.memory import available_memory
from ofm_tiling.tileconfig import read_tile_configuration

GB = 10**9
CAMERA = (2464, 3280)  # 8 MP tiles, (height, width)


# --- planning -------------------------------------------------------------------------------------

def test_peak_estimate_follows_width_as_measured():
    """The model reproduces the measured peaks (BENCHMARKS.md) within 10%: 891 MB at 10, 1508 MB at 20 wide."""
    for columns, measured_mb in ((10, 891), (20, 1508)):
        assert abs(peak_bytes(CAMERA, columns) / 1e6 - measured_mb) < 0.1 * measured_mb
    assert peak_bytes(CAMERA, 20) > 1.6 * peak_bytes(CAMERA, 10) - BASE_BYTES
    assert peak_bytes(CAMERA, 10, focus="edf", threads=2) > peak_bytes(CAMERA, 10) + 500e6


def test_band_columns_counts_tiles_a_band_crosses():
    h, step = 240, (224, 168)
    grid = np.array([(c * step[0] + 3 * r, r * step[1] + (c % 2) * 5) for r in range(4) for c in range(7)], float)
    assert band_columns(grid, h) == 7
    assert band_columns(grid[::7], h) == 1  # one column
    assert band_columns(np.zeros((0, 2)), h) == 0


def test_plan_is_capped_by_cores_then_memory():
    small = [peak_bytes((240, 320), 3)] * 6
    plan = plan_batch(small, cores=4, available_bytes=16 * GB)
    assert (plan.jobs, plan.threads, plan.limited_by) == (4, 1, "cores")
    wide = [peak_bytes(CAMERA, 20)] * 6  # ~1.5 GB each: 4 GB available, 3.2 GB budget -> 2 at once
    plan = plan_batch(wide, cores=8, available_bytes=4 * GB)
    assert (plan.jobs, plan.threads, plan.limited_by) == (2, 4, "memory")
    assert plan.jobs * plan.largest_bytes <= 4 * GB * MEMORY_HEADROOM < (plan.jobs + 1) * plan.largest_bytes


def test_plan_caps_by_scans_jobs_and_fiji_and_never_drops_to_zero():
    peaks = [200e6] * 2
    assert plan_batch(peaks, cores=8, available_bytes=16 * GB).limited_by == "scans"
    assert plan_batch(peaks, cores=8, available_bytes=16 * GB).threads == 4
    capped = plan_batch([200e6] * 9, cores=2, available_bytes=16 * GB, jobs=3)
    assert (capped.jobs, capped.limited_by, capped.threads) == (3, "jobs", 1)  # --jobs may exceed the cores
    assert plan_batch([200e6] * 9, cores=8, available_bytes=16 * GB, one_at_a_time=True).jobs == 1
    huge = plan_batch([50 * GB, 1 * GB], cores=8, available_bytes=8 * GB)
    assert huge.jobs == 1 and huge.over_budget and huge.threads == 8
    with pytest.raises(OfmTilingError, match="jobs must be at least 1"):
        plan_batch(peaks, cores=2, available_bytes=GB, jobs=0)


def test_available_memory_reads_memavailable(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   12345678 kB\n")
    assert available_memory(meminfo) == 12345678 * 1024
    assert available_memory(tmp_path / "missing") > 0


def test_estimate_from_a_real_scan(scans, tmp_path):
    scan, truth = scans("batch-a", grid=(3, 2), seed=1)
    est = estimate_scan(scan)
    assert (est.tiles, est.tile_shape, est.columns) == (6, (240, 320), 3)
    assert est.peak_bytes == peak_bytes((240, 320), 3)
    assert estimate_scan(scan, grid=(6, 1)).columns == 6
    (tmp_path / "empty").mkdir()
    assert estimate_scan(tmp_path / "empty").peak_bytes == BASE_BYTES
    plan = plan_local([str(scan)] * 3, {}, cores=2, available=8 * GB)
    assert (plan.jobs, plan.threads) == (2, 1)


# --- outcomes and the summary ---------------------------------------------------------------------

def test_summary_lists_every_scan_with_figures_and_errors():
    good = ScanOutcome("/data/a", None, 12.34, 100, "/data/a/stitched", 342, 319, 0.05, 0.41, 38.2)
    bad = ScanOutcome("/data/b", "/data/b: no position folders with JPEG images", 0.2)
    text = format_summary([good, bad])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["scan", "status", "tiles"]
    assert lines[2].split() == ["/data/a", "ok", "100", "12.3", "319/342", "0.05/0.41", "38.2", "/data/a/stitched"]
    assert lines[3].split()[:3] == ["/data/b", "failed", "-"]
    assert "/data/b: no position folders with JPEG images" in lines  # the error once, scan not repeated
    assert lines[-1] == "1 of 2 scans stitched, 1 failed (12.5 s of stitching)"
    last = format_summary([good], wall=20.0).splitlines()[-1]
    assert last == "1 of 1 scans stitched, 0 failed in 20.0 s (12.3 s of stitching)"
    assert format_progress(good, 1, 2) == "[1/2] ok /data/a (100 tiles, 12.3 s)"
    assert format_progress(bad, 2, 2) == "[2/2] failed /data/b: no position folders with JPEG images"


def test_stitch_one_turns_errors_into_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    outcome = stitch_one(str(tmp_path / "empty"), {"check_focus": False})
    assert not outcome.ok and "\n" not in outcome.error and "no position folders" in outcome.error
    crash = stitch_one(str(tmp_path / "empty"), {"no_such_option": 1})
    assert crash.error.startswith("internal error: TypeError:") and "\n" not in crash.error


def test_a_process_that_dies_is_an_internal_error_of_its_scan():
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=os._exit, args=(3,))
    proc.start()
    send.close()
    outcome = _receive(receive, "/data/c", proc, time.perf_counter())
    assert outcome.error == "internal error: its process ended without a result (exit code 3)"


# --- whole batches --------------------------------------------------------------------------------

@pytest.fixture
def three_scans(copy_scan, tmp_path):
    """Two good generated scans and one broken (an empty folder), with the truths of the good ones."""
    a, truth_a = copy_scan("batch-a", grid=(3, 2), seed=1)
    b, truth_b = copy_scan("batch-b", grid=(3, 2), seed=2)
    broken = tmp_path / "broken"
    broken.mkdir()
    return [a, b, broken], {a: truth_a, b: truth_b}


def check_batch_outputs(out: str, scans, truths, out_name="stitched"):
    """Both good scans stitched to their truth, the broken one failed, all three in the summary."""
    for scan, truth in truths.items():
        names, positions = read_tile_configuration(scan / "use" / "TileConfiguration.registered.txt")
        err = placement_errors(positions, truth.true_xy_array())
        assert len(names) == 6 and err.max() <= 1.0, err
        report = json.loads((scan / out_name / "stitching-report.json").read_text())
        assert (scan / out_name / "mosaic.ome.tif").stat().st_size > 0
        row = next(line.split() for line in out.splitlines() if line.startswith(str(scan) + " "))
        links = report["summary"]
        assert row[1:5] == ["ok", "6", row[3], f"{links['links_accepted']}/{links['links']}"]
        assert row[-1] == str(scan / out_name)
    broken_rows = [line for line in out.splitlines() if line.startswith(str(scans[2]))]
    assert broken_rows[0].split()[1] == "failed"
    assert any("no position folders with JPEG images" in line for line in broken_rows)
    assert "2 of 3 scans stitched, 1 failed" in out


def test_local_batch_of_three_scans_one_broken(three_scans, capsys):
    scans, truths = three_scans
    code = main(["batch", *map(str, scans), "--no-focus-check", "--out-name", "mosaic", "--jobs", "2"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    check_batch_outputs(captured.out, scans, truths, out_name="mosaic")
    progress = [line for line in captured.err.splitlines() if line.startswith("[")]
    assert sorted(line[:5] for line in progress) == ["[1/3]", "[2/3]", "[3/3]"]
    assert "Traceback" not in captured.err


def test_bad_arguments_exit_2(three_scans, tmp_path, capsys):
    scans, _ = three_scans
    assert main(["batch", str(scans[0]), str(tmp_path / "missing")]) == 2
    assert main(["batch", str(scans[0]), str(scans[0])]) == 2
    assert main(["batch", str(scans[0]), "--quality", "0"]) == 2
    assert main(["batch", str(scans[0]), "--out-name", "a/b"]) == 2
    assert main(["batch", str(scans[0]), "--jobs", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "missing: scan folder not found" in err and "given twice" in err
    assert "--quality: must be an integer from 1 to 100" in err and "--out-name must be a plain folder name" in err
    assert "--jobs is for stitching here" in err
    assert not (scans[0] / "stitched").exists()  # nothing ran


# --- a real Dask cluster on 127.0.0.1 -------------------------------------------------------------

def _start(args, env, log):
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def dask_cluster(tmp_path):
    """A Dask scheduler and two single-thread workers, separate processes on 127.0.0.1; yields the address.

    Torn down by the scheduler's shutdown, then by terminating whatever is left.
    """
    distributed = pytest.importorskip("distributed")
    root = str(Path(ofm_tiling.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    info = tmp_path / "scheduler.json"
    log = open(tmp_path / "cluster.log", "wb")
    procs = [_start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                     "--scheduler-file", str(info)], env, log)]
    for k in range(2):
        procs.append(_start(["distributed.cli.dask_worker", "--scheduler-file", str(info), "--host", "127.0.0.1",
                             "--nthreads", "1", "--no-dashboard", "--no-nanny", "--name", f"w{k}",
                             "--local-directory", str(tmp_path / f"w{k}")], env, log))
    try:
        with distributed.Client(scheduler_file=str(info), timeout="30s") as client:
            client.wait_for_workers(2, timeout=45)
            address = client.scheduler.address
        assert address.startswith("tcp://127.0.0.1:")
        yield address  # no client of ours is open: batch must work on its own
        with distributed.Client(address, timeout="30s") as client:
            client.shutdown()  # scheduler and workers stop at once (faster than SIGTERM's graceful close)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def test_dask_batch_of_three_scans_one_broken(three_scans, dask_cluster, capsys):
    scans, truths = three_scans
    t0 = time.perf_counter()
    code = main(["batch", *map(str, scans), "--scheduler", dask_cluster, "--no-focus-check"])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    check_batch_outputs(captured.out, scans, truths)
    assert "Traceback" not in captured.err
    assert time.perf_counter() - t0 < 60


def test_unreachable_scheduler_is_a_one_line_error(tmp_path):
    pytest.importorskip("distributed")
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OfmTilingError, match="cannot reach the Dask scheduler") as info:
        run_dask([str(tmp_path)], {}, f"tcp://127.0.0.1:{port}", connect_timeout=2)
    assert "\n" not in str(info.value)
