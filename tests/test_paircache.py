"""The pairwise cache: identical registrations with and without it, and no measuring of known pairs."""
import json
import logging
import shutil

import numpy as np
import pytest

from ofm_tiling.collect import collect
from ofm_tiling.paircache import PAIR_CACHE, PairCache, tile_digest
from ofm_tiling.register import JpegTiles, register, stream
from ofm_tiling.stitch import stitch


@pytest.fixture
def counted(monkeypatch):
    """Counts of pair measurements, null comparisons and tile decodes during registration."""
    calls = {"pair": 0, "null": 0, "decode": 0}

    def wrap(name, fn):
        def counting(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return counting

    monkeypatch.setattr(stream, "measure_pair", wrap("pair", stream.measure_pair))
    monkeypatch.setattr(stream, "null_match", wrap("null", stream.null_match))
    monkeypatch.setattr(JpegTiles, "gray", wrap("decode", JpegTiles.gray))
    return calls


@pytest.fixture
def collected(scans, tmp_path):
    scan, truth = scans("paircache", grid=(4, 3), planes=1)
    result = collect(scan, out=tmp_path / "use")
    return result, truth


def same_registration(a, b) -> None:
    assert [(lk.i, lk.j, lk.accepted, lk.reason, lk.shift, lk.correlation, lk.threshold) for lk in a.links] == \
           [(lk.i, lk.j, lk.accepted, lk.reason, lk.shift, lk.correlation, lk.threshold) for lk in b.links]
    assert np.array_equal(a.null_significance, b.null_significance)
    assert a.threshold == b.threshold and a.max_deviation == b.max_deviation


def test_cached_registration_is_identical_and_measures_nothing(collected, counted, tmp_path):
    result, _ = collected
    args = (result.positions,)
    kw = dict(tile_shape=result.tile_shape, workers=2)
    fresh = register(JpegTiles(result.paths), *args, **kw)
    measured = dict(counted)
    assert measured["pair"] == len(fresh.links) > 10 and measured["null"] >= 32

    cache = PairCache(None, tmp_path / PAIR_CACHE)
    first = register(JpegTiles(result.paths), *args, cache=cache, **kw)
    cache.save()
    same_registration(first, fresh)
    assert cache.hits == 0 and cache.misses == measured["pair"] + measured["null"]

    before = dict(counted)
    reread = PairCache(tmp_path / PAIR_CACHE, None)
    again = register(JpegTiles(result.paths), *args, cache=reread, **kw)
    same_registration(again, fresh)
    assert {k: counted[k] - before[k] for k in counted} == {"pair": 0, "null": 0, "decode": 0}
    assert reread.hits == cache.misses and reread.misses == 0


def test_only_new_pairs_are_measured_as_a_scan_grows(collected, counted):
    result, _ = collected
    kw = dict(tile_shape=result.tile_shape, workers=2)
    n = len(result.paths)
    cache = PairCache()
    register(JpegTiles(result.paths[:n - 4]), result.positions[:n - 4], cache=cache, **kw)
    before = dict(counted)
    grown = register(JpegTiles(result.paths), result.positions, cache=cache, **kw)
    new_pairs = sum(1 for lk in grown.links if max(lk.i, lk.j) >= n - 4)
    assert counted["pair"] - before["pair"] == new_pairs < len(grown.links)
    same_registration(grown, register(JpegTiles(result.paths), result.positions, **kw))


def test_key_follows_content_and_settings(collected, counted, tmp_path):
    result, _ = collected
    kw = dict(tile_shape=result.tile_shape, workers=2)
    cache = PairCache()
    register(JpegTiles(result.paths), result.positions, cache=cache, **kw)
    before = dict(counted)
    register(JpegTiles(result.paths), result.positions, cache=cache, refine_patches=1, **kw)
    assert counted["pair"] - before["pair"] > 0  # other settings: measured again
    # A changed tile (another file's bytes) is measured again with every pair it is in.
    paths = list(result.paths)
    swapped = tmp_path / "swapped.jpeg"
    shutil.copyfile(paths[1], swapped)
    paths[0] = swapped
    assert tile_digest(JpegTiles(paths), 0) == tile_digest(JpegTiles(paths), 1) != \
           tile_digest(JpegTiles(result.paths), 0)
    before = dict(counted)
    links = register(JpegTiles(paths), result.positions, cache=cache, **kw).links
    assert counted["pair"] - before["pair"] == sum(1 for lk in links if 0 in (lk.i, lk.j)) > 0


def test_damaged_cache_is_a_warning_and_measures_again(collected, tmp_path, caplog):
    result, _ = collected
    bad = tmp_path / PAIR_CACHE
    bad.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="ofm_tiling"):
        cache = PairCache(bad, bad)
    assert "pair cache not readable" in caplog.text and not cache.entries
    reg = register(JpegTiles(result.paths), result.positions, tile_shape=result.tile_shape, cache=cache)
    cache.save()
    assert cache.misses > 0 and len(json.loads(bad.read_text())["entries"]) == cache.misses
    same_registration(reg, register(JpegTiles(result.paths), result.positions, tile_shape=result.tile_shape))


def test_stitch_again_reuses_the_cache(copy_scan, counted):
    scan, _ = copy_scan("paircache-stitch", grid=(4, 3), planes=2)
    first = stitch(scan, check_focus=False)
    measured = dict(counted)
    assert (first.out_dir / PAIR_CACHE).is_file() and measured["pair"] == len(first.placement.links)
    again = stitch(scan, check_focus=False)
    assert {k: counted[k] - measured[k] for k in counted} == {"pair": 0, "null": 0, "decode": 0}
    assert np.array_equal(first.positions, again.positions)
    assert [(lk.i, lk.j, lk.accepted, lk.shift) for lk in first.placement.links] == \
           [(lk.i, lk.j, lk.accepted, lk.shift) for lk in again.placement.links]
    assert (again.out_dir / PAIR_CACHE).is_file()
    print(f"registration: first run {first.timings['registration']:.3f} s, "
          f"re-run {again.timings['registration']:.3f} s")
