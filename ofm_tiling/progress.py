"""Progress bars for long steps, as ``callback(done, total)`` functions (silent when quiet)."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Progress = Callable[[int, int], None]


@contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[Progress | None]:
    """A ``callback(done, total)`` drawing a tqdm bar on stderr, or None when disabled."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bar = tqdm(desc=description, unit="", leave=False, file=sys.stderr, dynamic_ncols=True,
               disable=not sys.stderr.isatty())

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
