"""Giving freed memory back to the operating system while a long stream runs.

Streaming fusion frees a row of decoded tiles (hundreds of MB for 8 MP tiles) every few bands,
while other threads keep allocating bands, halves and cells of other sizes. glibc's allocator
keeps such freed blocks inside its heaps, scattered between live ones, so the process's resident
memory creeps up with the length of the scan although what it holds does not. ``malloc_trim``
returns the free pages; elsewhere (macOS, Windows, musl) this is a no-op.
"""
from __future__ import annotations

import ctypes
import sys
from functools import lru_cache

__all__ = ["release_free_memory"]


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
