"""Safe writing: atomic files, folders replaced together as one unit, and one run per scan.

The user's result is only ever replaced whole. A file is written under a hidden temporary name in
its own folder and renamed onto its final name. A run's folders (``use/`` and the output folder)
are built under hidden staging names and swapped in together by `FolderSwap.commit`; a journal
records the swap while it happens, so a run killed half-way through is rolled back by the next
run (`recover`), which also removes what killed runs left behind. `ScanLock` keeps a second run
from working on the same scan at the same time.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import OfmTilingError

__all__ = ["MARKER", "atomic_file", "write_text_atomic", "check_output_dir", "FolderSwap", "recover",
           "ScanLock"]

#: Every folder ofm-tiling writes holds this file, so later runs may replace it and never read it
#: as part of a scan.
MARKER = ".ofm-tiling"
_MARKER_TEXT = "Made by ofm-tiling; replaced as a whole on every run.\n"
_STAGING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
_JOURNAL_SUFFIX = ".swap.json"


def _problem(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


# --- files --------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, sync: bool = False) -> Iterator[str]:
    """Write a file under a hidden temporary name and rename it onto `path` when complete.

    Parameters
    ----------
    path : path-like
        Final file name; its folder must exist.
    sync : bool
        Flush the file to disk before the rename (for small files that must survive a crash).

    Yields
    ------
    str
        A new, empty file in the same folder (so the rename is atomic). If the ``with`` block
        raises, it is deleted and `path` is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.split(path)
    tmp = _reserve(folder, base)
    try:
        yield tmp
        if sync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _reserve(folder: str, base: str) -> str:
    """Create a new empty hidden file in `folder` and return its path."""
    for _ in range(100):
        name = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            with open(name, "xb"):  # mode "x" honours the umask: the result gets normal permissions
                return name
        except FileExistsError:
            continue
        except OSError as exc:
            raise OfmTilingError(folder, f"cannot write here: {_problem(exc)}") from None
    raise OfmTilingError(folder, "cannot write here: no free temporary file name")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text to `path` through `atomic_file`."""
    with atomic_file(path, sync=True) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


# --- folders ------------------------------------------------------------------------------------

def check_output_dir(folder: str | os.PathLike, *, parameter: str) -> Path:
    """Refuse a folder ofm-tiling may not replace: a file, or a non-empty folder it did not make.

    Parameters
    ----------
    folder : path-like
        The folder a run will replace.
    parameter : str
        Name of the option that chose it, for the message.
    """
    out = Path(folder)
    if out.exists():
        if not out.is_dir():
            raise OfmTilingError(out, f"exists and is not a folder; choose another {parameter} folder")
        if not (out / MARKER).exists() and any(out.iterdir()):
            raise OfmTilingError(out, "folder exists, is not empty and was not made by ofm-tiling; "
                                      f"choose another {parameter} folder")
    return out


@dataclass
class _Entry:
    target: Path
    staging: Path
    old: Path


class FolderSwap:
    """Build several folders under staging names, then put them all in place as one unit.

    Use as a context manager: leaving the block with an exception removes the staging folders
    and leaves every target as it was. `commit` renames all of them in, recording the swap in a
    journal first so that a run killed during the renames is rolled back by `recover`.

    Parameters
    ----------
    targets : sequence of path-like
        The final folders (each checked with `check_output_dir` by the caller).
    journal_dir : path-like
        Where the journal of the swap is kept (the folder of the run's lock).
    """

    def __init__(self, targets: Sequence[str | os.PathLike], *, journal_dir: str | os.PathLike):
        pid = os.getpid()
        self.entries = {Path(t): _Entry(Path(t), Path(t).parent / f".{Path(t).name}.tmp-{pid}",
                                        Path(t).parent / f".{Path(t).name}.old-{pid}") for t in targets}
        self.journal = Path(journal_dir) / f"{MARKER}{_JOURNAL_SUFFIX}"

    def staging(self, target: str | os.PathLike) -> Path:
        """The staging folder for `target`, created empty (with the marker) on first use."""
        entry = self.entries[Path(target)]
        if not entry.staging.exists():
            try:
                shutil.rmtree(entry.staging, ignore_errors=True)
                entry.staging.mkdir(parents=True)
                (entry.staging / MARKER).write_text(_MARKER_TEXT)
            except OSError as exc:
                raise OfmTilingError(entry.target.parent, f"cannot write here: {_problem(exc)}") from None
        return entry.staging

    def __enter__(self) -> FolderSwap:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            self.abort()

    def abort(self) -> None:
        """Remove every staging folder; the targets stay as they were."""
        for entry in self.entries.values():
            shutil.rmtree(entry.staging, ignore_errors=True)

    def commit(self) -> None:
        """Rename every staging folder onto its target, as one unit."""
        entries = [e for e in self.entries.values() if e.staging.exists()]
        doc = [{"target": str(e.target), "staging": str(e.staging), "old": str(e.old)} for e in entries]
        try:
            write_text_atomic(self.journal, json.dumps(doc, indent=1) + "\n")
            for e in entries:
                if e.target.exists():
                    os.replace(e.target, e.old)
                os.replace(e.staging, e.target)
        except OSError as exc:
            _roll_back(entries)
            self.journal.unlink(missing_ok=True)
            raise OfmTilingError(exc.filename or entries[0].target, f"cannot write: {_problem(exc)}") from None
        except BaseException:
            _roll_back(entries)
            self.journal.unlink(missing_ok=True)
            raise
        self.journal.unlink(missing_ok=True)  # the commit point: from here on the new result stands
        for e in entries:
            shutil.rmtree(e.old, ignore_errors=True)


def _roll_back(entries: Sequence[_Entry]) -> None:
    """Undo a partial swap: every target that has a saved old version gets it back."""
    for e in entries:
        if e.old.exists():
            if e.target.exists():
                shutil.rmtree(e.target, ignore_errors=True)
            os.replace(e.old, e.target)
        shutil.rmtree(e.staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(journal_dir: str | os.PathLike, targets: Sequence[str | os.PathLike]) -> list[str]:
    """Undo a swap a killed run left half-done and remove staging folders of dead runs.

    Call while holding the `ScanLock`. Returns one note per thing repaired or removed.
    """
    notes = []
    journal = Path(journal_dir) / f"{MARKER}{_JOURNAL_SUFFIX}"
    if journal.exists():
        try:
            doc = json.loads(journal.read_text(encoding="utf-8"))
            entries = [_Entry(Path(d["target"]), Path(d["staging"]), Path(d["old"])) for d in doc]
        except (OSError, ValueError, KeyError, TypeError):
            entries = []
        _roll_back(entries)
        journal.unlink(missing_ok=True)
        notes.append("an earlier run was interrupted while replacing its results: the previous results "
                     "were put back")
    for target in map(Path, targets):
        if not target.parent.is_dir():
            continue
        for child in target.parent.iterdir():
            m = _STAGING.match(child.name)
            if m and m["name"] == target.name and not _alive(int(m["pid"])) and (child / MARKER).exists():
                shutil.rmtree(child, ignore_errors=True)
                notes.append(f"removed {child.name}, left behind by an interrupted run")
    return notes


# --- one run per scan ---------------------------------------------------------------------------

class ScanLock:
    """An exclusive lock for one run on one scan, released by the system if the process dies.

    The lock is a hidden file beside the folders a run replaces; it names the holder (process id,
    host, start time) so a second run can say who it waits for. The file is removed on release.

    Parameters
    ----------
    folder : path-like
        The folder to lock (where ``use/`` is made: the scan folder by default).
    wait : bool
        Wait for another run to finish instead of refusing at once.
    timeout : float or None
        With `wait`, give up after this many seconds.
    """

    def __init__(self, folder: str | os.PathLike, *, wait: bool = False, timeout: float | None = None):
        self.path = Path(folder) / f"{MARKER}.lock"
        self.wait = wait
        self.timeout = timeout
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds the lock, as written in the lock file (empty if unknown)."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"process {info['pid']} on {info['host']}, started {info['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            return ""

    def acquire(self) -> ScanLock:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise OfmTilingError(self.path, f"cannot lock: {_problem(exc)}") from None
                if not self.wait or (deadline is not None and time.monotonic() > deadline):
                    who = self.holder() or "another process"
                    raise OfmTilingError(self.path.parent, f"another ofm-tiling run is working on this scan "
                                                           f"({who}); wait for it, or use --wait") from None
                time.sleep(0.2)
                continue
            if self._same_file(fd):  # not unlinked by a holder that released it meanwhile
                self._fd = fd
                self._write_holder(fd)
                return self
            os.close(fd)

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # the folder the run is about to write in
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OfmTilingError(self.path.parent, f"cannot write here: {_problem(exc)}") from None

    def _same_file(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    @staticmethod
    def _write_holder(fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # before unlocking, so a waiter re-checks the inode and retries
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> ScanLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
