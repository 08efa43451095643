"""Shared generated scans. Each is made once per test session; tests that change files copy them."""
import hashlib
import shutil
from pathlib import Path

import pytest

from ofm_tiling.synthetic import make_scan

SMALL = dict(tile_size=(320, 240), overlap=0.3, stage_error_px=20.0)


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
