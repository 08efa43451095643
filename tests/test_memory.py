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
