"""The options of a run and their rules, checked before any work starts.

One home for every choice and range: the command line takes its choices from here, and the
library checks values here, so a bad value is refused at once with a one-line `OptionError`
naming the parameter, never after minutes of work.
"""
from __future__ import annotations

import operator
import os
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import OptionError

__all__ = ["CHOICES", "CollectOptions", "StitchOptions"]

#: Allowed values of every option that is a choice; the first is the default.
CHOICES: dict[str, tuple[str, ...]] = {
    "select": ("tag", "sharpest"),
    "focus": ("central", "edf"),
    "backend": ("builtin", "fiji"),
    "fiji_layout": ("positions", "grid"),
    "compression": ("jpeg", "deflate", "none"),
}
#: What a tile can hold: 8-bit RGB, 8-bit grey or 16-bit grey. The mosaic keeps the tiles' type.
PIXEL_TYPES = ("rgb8", "grey8", "grey16")

QUALITY_RANGE = (1, 100)
#: JPEG quality of the mosaic's RGB tiles: colour within 42 dB of the exact mosaic (quality 80 gave
#: 38 dB on a whole H&E slide but under 34 dB on dense tissue tiles; benchmarks/jpeg_colour.py).
DEFAULT_QUALITY = 90


def check_quality(value: object, parameter: str = "quality") -> int:
    """A JPEG quality, an integer from 1 to 100 (the mosaic's tiles, the viewer's tiles)."""
    ok = isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, float))
    q = operator.index(value) if ok and not isinstance(value, bool) else 0  # type: ignore[arg-type]
    if not QUALITY_RANGE[0] <= q <= QUALITY_RANGE[1]:
        raise OptionError(parameter, f"must be an integer from {QUALITY_RANGE[0]} to {QUALITY_RANGE[1]}, "
                                     f"got {value!r}")
    return q


def _check_choice(name: str, value: object) -> None:
    if value not in CHOICES[name]:
        *first, last = [repr(c) for c in CHOICES[name]]
        raise OptionError(name, f"must be {', '.join(first)} or {last}, not {value!r}")


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    if not ok:
        span = f"from {lo} to {hi}" if hi is not None else f"of at least {lo}"
        raise OptionError(name, f"must be a whole number {span}, not {value!r}")


@dataclass(frozen=True)
class CollectOptions:
    """How `collect` chooses, orders and writes the tiles (see `ofm_tiling.collect.collect`)."""

    select: str = "tag"
    focus: str = "central"
    link: bool = False
    strict: bool = False
    grid: tuple[int, int] | None = None
    overlap: float | None = None
    workers: int | None = None
    layout: str | os.PathLike | None = None  # a TileConfiguration kept elsewhere; tile names relative to the scan

    def check(self) -> None:
        """Raise `OptionError` for the first value that cannot work."""
        _check_choice("select", self.select)
        _check_choice("focus", self.focus)
        if self.grid is not None:
            if len(self.grid) != 2:
                raise OptionError("grid", f"must be (columns, rows), not {self.grid!r}")
            for value in self.grid:
                _check_int("grid", value, 1)
            if self.overlap is None or not 0 <= self.overlap < 1:
                raise OptionError("overlap", f"must be a fraction from 0 to below 1 with grid "
                                             f"(e.g. 0.3), not {self.overlap!r}")
        elif self.overlap is not None:
            raise OptionError("overlap", "is used only with grid (tiles without stage positions)")
        if self.workers is not None:
            _check_int("workers", self.workers, 1)
        if self.layout is not None and not Path(self.layout).is_file():
            raise OptionError("layout", f"names no file: {self.layout}")

    def thread_count(self) -> int:
        """Worker threads to use: the option, else every core."""
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True)
class StitchOptions(CollectOptions):
    """Everything `stitch` does beyond collecting (see `ofm_tiling.stitch.stitch`)."""

    backend: str = "builtin"
    fiji: str | os.PathLike | None = None
    fiji_layout: str = "positions"
    keep_fiji_mosaic: bool = False
    compression: str = "jpeg"
    quality: int = DEFAULT_QUALITY
    check_focus: bool = True
    viewer: bool = False
    wait: bool = False

    def check(self) -> None:
        super().check()
        _check_choice("backend", self.backend)
        _check_choice("fiji_layout", self.fiji_layout)
        from .pyramid import check_options  # the writer is the home of its own rules

        check_options(compression=self.compression, quality=self.quality)
        if self.backend != "fiji":
            for name in ("fiji", "keep_fiji_mosaic"):
                if getattr(self, name):
                    raise OptionError(name, "is used only with backend 'fiji'")
        if self.fiji is not None and not Path(self.fiji).exists():
            raise OptionError("fiji", f"names no folder: {self.fiji}")

    def collect_options(self) -> CollectOptions:
        """The collection part of these options."""
        return CollectOptions(**{f.name: getattr(self, f.name) for f in fields(CollectOptions)})
