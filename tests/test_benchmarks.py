"""Smoke run of the benchmark script on a tiny scan (timings are not checked: benchmarks measure, tests don't)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


def test_benchmark_script_runs_and_records_every_stage(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--preset", "tiny", "--no-ofs", "--work", str(tmp_path / "w"),
                          "--cache", str(tmp_path / "c")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "w" / "tiny" / "results.json").read_text())
    summary = results["summary"]
    for key in ("ours_wall_s", "floor_s", "ratio_reg_fusion_to_floor", "index_warm_s"):
        assert np.isfinite(summary[key]) and summary[key] > 0, key
    assert (tmp_path / "w" / "tiny" / "BENCHMARKS.md").read_text().count("|") > 20
