"""The backend interface, and the built-in backend: register the overlaps, then solve globally.

A backend turns collected tiles into a `Placement`. `stitch` chooses one by name and from then
on treats them alike: both are fused by the built-in streamed fusion, unless a backend offers a
mosaic of its own (`Backend.own_mosaic`).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from .placement import Placement
from .progress import progress_bar

if TYPE_CHECKING:
    from .collect import Collection
    from .paircache import PairCache

__all__ = ["Backend", "BuiltinBackend", "Mosaic"]


class Mosaic(NamedTuple):
    """A mosaic as a stream: its ``(height, width)``, ``(y0, rows)`` bands from the top, and what a
    pixel holds (`ofm_tiling.pixels.PIXEL_TYPES`: bands ``(rows, W, 3)`` uint8, ``(rows, W)`` uint8
    or ``(rows, W)`` uint16)."""

    shape: tuple[int, int]
    bands: Iterator[tuple[int, np.ndarray]]
    pixel_type: str = "rgb8"


class Backend(Protocol):
    """What `stitch` needs of a backend."""

    name: str

    def check(self) -> None:
        """Raise `OfmTilingError` now if the backend cannot run (before any work starts)."""

    def place(self, collection: Collection, *, workers: int, show_progress: bool,
              cache: PairCache | None = None) -> Placement:
        """Register the collected tiles and place every one of them. `cache` holds pairwise results
        of earlier runs (`ofm_tiling.paircache`) for a backend that can reuse them; it is saved."""

    def own_mosaic(self, collection: Collection, placement: Placement) -> Mosaic | None:
        """The backend's own fused mosaic for `placement`, or None for the built-in fusion."""


class BuiltinBackend:
    """Built-in registration (`ofm_tiling.register`) and global solve (`ofm_tiling.solve`)."""

    name = "builtin"

    def check(self) -> None:
        return None

    def place(self, collection: Collection, *, workers: int, show_progress: bool,
              cache: PairCache | None = None) -> Placement:
        from .register import JpegTiles, register
        from .solve import solve

        stage = collection.positions
        if len(stage) == 1:
            return Placement.from_stage(stage, note="only one tile: nothing to register")
        with progress_bar("registering", enabled=show_progress) as bar:
            registration = register(JpegTiles(collection.paths), stage, tile_shape=collection.tile_shape,
                                    workers=workers, progress=bar, cache=cache,
                                    nominal=collection.kind == "tileconfig")
        if cache is not None:
            cache.save()
        solution = solve(stage, registration.links)
        notes = []
        if not any(link.accepted for link in registration.links):
            notes.append("no pair of tiles could be registered (blank glass or no overlap?): "
                         "the mosaic uses the stage positions")
        return Placement(solution.positions, registration.links, registration.criteria, solution.stage_model,
                         solution.groups, solution.residuals, solution.rejected_in_solve, notes=notes)

    def own_mosaic(self, collection: Collection, placement: Placement) -> Mosaic | None:
        return None
