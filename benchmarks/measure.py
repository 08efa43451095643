"""Running one measured thing in its own child process: wall time, CPU time and peak memory.

Wall time is measured around the child; CPU time and peak RSS come from ``os.wait4`` (the child
and everything it waited for); the peak of the summed RSS of the process tree is also sampled with
psutil when it is installed. The 1-minute load average is recorded before each measurement.
A child reports its result as one ``RESULT_PREFIX`` line of JSON on stdout.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

RESULT_PREFIX = "BENCH-RESULT "
RUN_SCRIPT = Path(__file__).resolve().with_name("run.py")  # children run as `run.py --child TASK ARGS`


def log(msg: str) -> None:
    """Progress on stderr, with the time of day."""
    print(f"[{datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> list[float]:
    """The 1, 5 and 15-minute load averages (the machine may be shared), or [] where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict:
    """Cores, CPU, memory, platform and the versions of the libraries that set the figures."""
    import numpy
    import PIL
    from PIL import features

    info = {"cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": numpy.__version__, "pillow": PIL.__version__,
            "libjpeg_turbo": features.version("libjpeg_turbo")}
    for mod in ("scipy", "tifffile", "imagecodecs", "ofm_tiling"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - informative only
            info[mod] = None
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kb = int(next(line.split()[1] for line in meminfo.splitlines() if line.startswith("MemTotal")))
        info["memory_gib"] = round(kb / 1024 ** 2, 1)
    except (OSError, StopIteration, ValueError):
        info["memory_gib"] = None
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
        info["cpu"] = model
    except (OSError, StopIteration):
        info["cpu"] = None
    return info


def _tree_rss(proc) -> int:
    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except Exception:  # noqa: BLE001 - the process may be gone
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except Exception:  # noqa: BLE001
            pass
    return total


def measure(cmd: list[str], *, log_path: Path, cwd: Path | None = None, timeout: float | None = None,
            env: dict | None = None) -> dict:
    """Run `cmd` in its own process group; wall, CPU, peak RSS and the child's result line."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    load = loadavg()
    with open(log_path, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                start_new_session=True)
        peak = [0]
        done = threading.Event()

        def sample():
            try:
                import psutil
                p = psutil.Process(proc.pid)
            except Exception:  # noqa: BLE001 - psutil is optional
                return
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(p))
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timed_out = [False]

        def kill():
            timed_out[0] = True
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill) if timeout else None
        if timer:
            timer.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if timer:
            timer.cancel()
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text(errors="replace")
    result = None
    for line in text.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
    rec = {"wall_s": round(wall, 3), "user_s": round(ru.ru_utime, 3), "sys_s": round(ru.ru_stime, 3),
           "cpu_s": round(ru.ru_utime + ru.ru_stime, 3), "peak_rss_mb": round(ru.ru_maxrss / 1024, 1),
           "tree_peak_rss_mb": round(peak[0] / 2 ** 20, 1) if peak[0] else None,
           "returncode": proc.returncode, "timed_out": timed_out[0], "load_before": load,
           "load_after": loadavg(), "result": result}
    if proc.returncode != 0:
        rec["error_tail"] = "\n".join(text.strip().splitlines()[-25:])
    return rec


def warm(*folders: str | Path) -> None:
    """Read every file under `folders` once, so a measurement starts with them in the page cache.

    Without it a measurement may find its input evicted: this machine reclaims idle page cache
    (kdamond), and its disk answers a read in tens of milliseconds, which adds seconds of waiting
    to whichever task comes first after a pause.
    """
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")) if Path(folder).is_dir() else []:
            if path.is_file():
                with open(path, "rb") as fh:
                    while fh.read(1 << 20):
                        pass


def child(task: str, args: dict, *, log_path: Path, timeout: float | None = None) -> dict:
    """Measure one task of ``tasks.TASKS`` in its own process (``run.py --child TASK ARGS``), its
    input folders (``scan``, ``use``) read once just before (`warm`)."""
    warm(*(args[key] for key in ("scan", "use") if key in args))
    cmd = [sys.executable, str(RUN_SCRIPT), "--child", task, json.dumps(args)]
    log(f"  {task} ...")
    rec = measure(cmd, log_path=log_path, timeout=timeout)
    if rec["returncode"] != 0:
        log(f"  {task} FAILED (exit {rec['returncode']}); see {log_path}")
    else:
        log(f"  {task}: {rec['wall_s']:.2f} s wall, {rec['cpu_s']:.2f} s CPU, {rec['peak_rss_mb']:.0f} MB")
    return rec


def emit(obj: dict) -> None:
    """Report a child's result to `measure` (one line on stdout)."""
    print(RESULT_PREFIX + json.dumps(obj), flush=True)
