"""Freed memory goes back to the operating system during long streams (glibc)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ofm_tiling.memory import _malloc_trim


@pytest.mark.skipif(_malloc_trim() is None, reason="malloc_trim is glibc's; a no-op elsewhere")
def test_freed_blocks_scattered_between_live_ones_are_returned():
    # As in fusion: many tile-sized blocks, a few of which stay alive while the rest are freed.
    code = textwrap.dedent("""
        import numpy as np
        from ofm_tiling.memory import release_free_memory

        def rss_mb():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

        a = np.ones(1 << 20, np.uint8)
        del a  # glibc now serves 1 MB blocks from its heap, not from fresh mappings
        blocks = [np.ones(1 << 20, np.uint8) for _ in range(300)]
        kept = blocks[::10]
        del blocks
        before = rss_mb()
        release_free_memory()
        print(before, rss_mb())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = map(float, out.split())
    print(f"resident after freeing 270 of 300 MB: {before:.0f} MB, after release: {after:.0f} MB")
    assert before - after > 200


@pytest.mark.skipif(_malloc_trim() is None, reason="malloc_trim is glibc's; a no-op elsewhere")
def test_trimmer_trims_only_when_resident_memory_crept_above_its_margin():
    # Freed memory that stays resident (as when freed tiles are not reused) is trimmed once it
    # exceeds the margin; freed memory under the margin is kept for reuse (no page faults).
    code = textwrap.dedent("""
        import numpy as np
        from ofm_tiling.memory import Trimmer, resident_memory

        def creep(mb):  # leaves about `mb` MB freed but resident in the heap
            blocks = [np.ones(1 << 20, np.uint8) for _ in range(mb * 10 // 9)]
            kept = blocks[::10]
            del blocks[:]
            return kept

        a = np.ones(1 << 20, np.uint8)
        del a  # glibc now serves 1 MB blocks from its heap, not from fresh mappings
        trimmer = Trimmer(margin=100 << 20)
        trimmer.freed()  # sets the ceiling
        kept = [creep(30)]
        before = resident_memory()
        trimmer.freed()
        small = before - resident_memory()
        kept.append(creep(270))
        before = resident_memory()
        trimmer.freed()
        print(small >> 20, (before - resident_memory()) >> 20)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    small, large = map(int, out.split())
    print(f"given back after 30 MB of creep: {small} MB, after 300 MB more: {large} MB")
    assert small < 10 and large > 200
