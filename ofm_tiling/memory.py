"""Memory and the operating system: how much is available now, and giving freed memory back.

Streaming fusion frees a row of decoded tiles (hundreds of MB for 8 MP tiles) every few bands,
while other threads keep allocating bands, halves and cells of other sizes. glibc's allocator
keeps such freed blocks inside its heaps, scattered between live ones, so the process's resident
memory creeps up with the length of the scan although what it holds does not. ``malloc_trim``
returns the free pages; elsewhere (macOS, Windows, musl) this is a no-op. A trim has a price:
pages given back are faulted in again when the next tiles are decoded into them, so
:class:`Trimmer` trims only once resident memory has crept a set margin above its level.
"""
from __future__ import annotations

import ctypes
import os
import sys
from functools import lru_cache

__all__ = ["Trimmer", "available_memory", "release_free_memory", "resident_memory"]


@lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_memory() -> None:
    """Return free heap pages to the operating system (glibc), cheaply (~1 ms)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class Trimmer:
    """Calls :func:`release_free_memory` when resident memory has crept `margin` bytes above
    what it was after the first call (or after the last trim, whichever is higher).

    Freed blocks that the next allocations reuse cost nothing; only memory freed and not reused
    makes the resident size creep. Trimming only then keeps it flat while sparing the page faults
    of trimming after every free (the pages given back are faulted in again by the next tiles).
    """

    def __init__(self, margin: int):
        self.margin = int(margin)
        self.ceiling: int | None = None  # resident bytes above which to trim

    def freed(self) -> None:
        """Call after freeing memory: trims if resident memory is above the ceiling."""
        if _malloc_trim() is None:
            return
        try:
            rss = resident_memory()
        except (OSError, ValueError, IndexError):  # no /proc: trim every time, as is safe
            release_free_memory()
            return
        if self.ceiling is None:
            self.ceiling = rss + self.margin
        elif rss > self.ceiling:
            release_free_memory()
            self.ceiling = max(self.ceiling, resident_memory() + self.margin)


def resident_memory(statm: str = "/proc/self/statm") -> int:
    """This process's resident memory in bytes (Linux)."""
    with open(statm, encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def available_memory(meminfo: str | os.PathLike = "/proc/meminfo") -> int:
    """Memory available to new processes now (MemAvailable), in bytes; physical memory elsewhere."""
    try:
        with open(meminfo, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30  # unknown: assume a small machine
