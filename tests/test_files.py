"""Safe writing: atomic files, folders swapped in as one unit and rolled back, one run per scan."""
import json
import multiprocessing
import os
import signal
import threading
import time

import pytest

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.files import MARKER, FolderSwap, ScanLock, atomic_file, check_output_dir, recover, write_text_atomic


def tree(folder):
    """Every file under `folder` with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- files -------------------------------------------------------------------------------------

def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with atomic_file(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and os.path.basename(tmp).startswith(".")
        with open(tmp, "w") as fh:
            fh.write("new")
        assert target.read_text() == "old"  # not visible until the block ends
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("writer failed")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_atomic_file_gives_normal_permissions_and_one_line_errors(tmp_path):
    write_text_atomic(tmp_path / "r.json", "{}\n")
    assert (tmp_path / "r.json").stat().st_mode & 0o644 == 0o644
    with pytest.raises(OfmTilingError, match="cannot write here"), atomic_file(tmp_path / "missing" / "x"):
        pass


def test_check_output_dir_refuses_foreign_folders(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(OfmTilingError, match="was not made by ofm-tiling; choose another out folder"):
        check_output_dir(tmp_path / "mine", parameter="out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OfmTilingError, match="is not a folder"):
        check_output_dir(tmp_path / "file", parameter="out")
    (tmp_path / "mine" / MARKER).write_text("")
    check_output_dir(tmp_path / "mine", parameter="out")  # ours: may be replaced
    check_output_dir(tmp_path / "new", parameter="out")


# --- folder swap -------------------------------------------------------------------------------

def _previous_result(root):
    for name in ("use", "out"):
        (root / name).mkdir()
        (root / name / MARKER).write_text("")
        (root / name / "result.txt").write_text(f"old {name}")
    return tree(root)


def test_folder_swap_replaces_both_folders_together(tmp_path):
    before = _previous_result(tmp_path)
    with FolderSwap([tmp_path / "use", tmp_path / "out"], journal_dir=tmp_path) as swap:
        for name in ("use", "out"):
            (swap.staging(tmp_path / name) / "result.txt").write_text(f"new {name}")
        assert tree(tmp_path) != before and (tmp_path / "use" / "result.txt").read_text() == "old use"
        swap.commit()
    assert (tmp_path / "use" / "result.txt").read_text() == "new use"
    assert (tmp_path / "out" / "result.txt").read_text() == "new out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "use"]  # no journal, staging or old


def test_folder_swap_failure_leaves_the_previous_result(tmp_path):
    before = _previous_result(tmp_path)
    with pytest.raises(ValueError), FolderSwap([tmp_path / "use", tmp_path / "out"], journal_dir=tmp_path) as swap:
        (swap.staging(tmp_path / "use") / "result.txt").write_text("new use")
        raise ValueError("the run failed")
    assert tree(tmp_path) == before


def _staged(root):
    swap = FolderSwap([root / "use", root / "out"], journal_dir=root)
    for name in ("use", "out"):
        (swap.staging(root / name) / "result.txt").write_text(f"new {name}")
    return swap


def test_a_rename_failing_half_way_rolls_the_swap_back(tmp_path, monkeypatch):
    before = _previous_result(tmp_path)
    swap = _staged(tmp_path)
    real_replace, calls = os.replace, []

    def failing_third_rename(src, dst):
        calls.append(src)
        if len(calls) == 3:  # use/ is swapped, out/ is not (the journal was the first rename)
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_third_rename)
    with pytest.raises(OfmTilingError, match="no space left on device"):
        swap.commit()
    assert tree(tmp_path) == before


def test_recover_rolls_back_a_swap_killed_half_way(tmp_path):
    """What SIGKILL between the two renames leaves: journal, new use/, old out/. Put the old back."""
    before = _previous_result(tmp_path)
    swap = _staged(tmp_path)
    swap.journal.write_text(json.dumps([{"target": str(e.target), "staging": str(e.staging), "old": str(e.old)}
                                        for e in swap.entries.values()]))
    e_use = swap.entries[tmp_path / "use"]
    os.replace(e_use.target, e_use.old)
    os.replace(e_use.staging, e_use.target)
    assert (tmp_path / "use" / "result.txt").read_text() == "new use"
    notes = recover(tmp_path, [tmp_path / "use", tmp_path / "out"])
    assert notes and "previous results were put back" in notes[0]
    assert tree(tmp_path) == before


def _stage_and_die(root):
    swap = FolderSwap([root / "use"], journal_dir=root)
    (swap.staging(root / "use") / "half.bin").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)


def test_recover_removes_staging_left_by_a_killed_process(tmp_path):
    before = _previous_result(tmp_path)
    child = multiprocessing.get_context("fork").Process(target=_stage_and_die, args=(tmp_path,))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".use.tmp-")]
    assert left == [f".use.tmp-{child.pid}"]
    (tmp_path / ".other.tmp-1").mkdir()  # not ours: kept
    notes = recover(tmp_path, [tmp_path / "use", tmp_path / "out"])
    assert notes == [f"removed .use.tmp-{child.pid}, left behind by an interrupted run"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1", "out", "use"]
    assert tree(tmp_path) == before


# --- one run per scan --------------------------------------------------------------------------

def test_second_lock_refuses_naming_the_holder(tmp_path):
    with ScanLock(tmp_path):
        with pytest.raises(OfmTilingError) as err:
            ScanLock(tmp_path).acquire()
        message = str(err.value)
        assert f"process {os.getpid()} on " in message and "started 20" in message and "--wait" in message
        assert "\n" not in message
    assert not (tmp_path / f"{MARKER}.lock").exists()  # released and removed
    with ScanLock(tmp_path):
        pass


def test_waiting_lock_gets_it_when_the_holder_finishes(tmp_path):
    first = ScanLock(tmp_path).acquire()
    threading.Timer(0.5, first.release).start()
    t0 = time.monotonic()
    with ScanLock(tmp_path, wait=True, timeout=20):
        assert time.monotonic() - t0 >= 0.4


def _lock_and_die(root):
    ScanLock(root).acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_dead_holder_does_not_keep_the_lock(tmp_path):
    child = multiprocessing.get_context("fork").Process(target=_lock_and_die, args=(tmp_path,))
    child.start()
    child.join()
    assert (tmp_path / f"{MARKER}.lock").exists()  # the file stays, the lock does not
    with ScanLock(tmp_path):
        pass
