"""The Fiji backend: Fiji's Grid/Collection stitching registers, ofm-tiling checks and fuses.

`FijiBackend.place` runs Fiji for registration only, then puts Fiji's links and positions
through the built-in rules (`ofm_tiling.fiji.checks`). The mosaic is fused by the built-in
streamed fusion from the checked positions, unless ``keep_fiji_mosaic`` asks for Fiji's own fused
image, which is kept only when no placement needed correcting.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from ..backend import Mosaic
from ..errors import OfmTilingError
from ..placement import Placement
from .checks import check_fiji
from .locate import find_fiji
from .run import METHODS, FijiRun, run_fiji

if TYPE_CHECKING:
    from ..collect import Collection

log = logging.getLogger("ofm_tiling")

__all__ = ["FijiBackend"]

LAYOUTS = ("positions", "grid")


class FijiBackend:
    """Fiji's Grid/Collection stitching as an `ofm_tiling.backend.Backend`.

    Parameters
    ----------
    fiji : path, optional
        Fiji.app (default: ``$FIJI_HOME`` or the usual install places).
    layout : {"positions", "grid"}
        Give Fiji the stage positions (any scan), or one of its grid types (complete rectangular
        scans taken in one of its orders).
    keep_fiji_mosaic : bool
        Let Fiji fuse too and use its fused image, when no placement needed correcting.
    regression_threshold : float
        The correlation R (0-1) Fiji needs to link a pair of tiles.
    method : {"auto", "pyimagej", "launcher"}
        How to run Fiji (see `ofm_tiling.fiji.run.run_fiji`).
    heap_gb, timeout : float, optional
        Java heap and how long to wait for a launcher run.
    """

    name = "fiji"

    def __init__(self, *, fiji: str | os.PathLike | None = None, layout: str = "positions",
                 keep_fiji_mosaic: bool = False, regression_threshold: float = 0.30, method: str = "auto",
                 heap_gb: float | None = None, timeout: float | None = None):
        self.fiji = fiji
        self.layout = layout
        self.keep_fiji_mosaic = keep_fiji_mosaic
        self.regression_threshold = regression_threshold
        self.method = method
        self.heap_gb = heap_gb
        self.timeout = timeout
        self._run: FijiRun | None = None

    def check(self) -> None:
        """Find Fiji and validate the options, before any work starts."""
        if self.layout not in LAYOUTS:
            raise OfmTilingError(None, f"layout must be 'positions' or 'grid', not {self.layout!r}")
        if self.method not in METHODS:
            raise OfmTilingError(None, f"method must be 'auto', 'pyimagej' or 'launcher', not {self.method!r}")
        if not 0 <= float(self.regression_threshold) <= 1:
            raise OfmTilingError(None, f"regression_threshold must be between 0 and 1, not {self.regression_threshold}")
        self.fiji = find_fiji(self.fiji)

    def place(self, collection: Collection, *, workers: int, show_progress: bool,
              cache: object = None) -> Placement:
        """Run Fiji on ``collection.use_dir``, then check its links and positions (Fiji measures every
        pair itself: `cache` is not used)."""
        def step(message: str) -> None:
            if show_progress:
                log.info("fiji: %s", message)

        self.close()
        self._run = run_fiji(collection.use_dir, names=collection.names, stage_positions=collection.positions,
                             tile_shape=collection.tile_shape, fiji=self.fiji, layout=self.layout,
                             fuse=self.keep_fiji_mosaic, regression_threshold=self.regression_threshold,
                             heap_gb=self.heap_gb, method=self.method, timeout=self.timeout, progress=step)
        placement = check_fiji(collection.names, collection.positions, collection.tile_shape,
                               self._run.registered, self._run.pairs, threshold=self.regression_threshold)
        placement.notes[:0] = self._run.job.notes
        return placement

    def own_mosaic(self, collection: Collection, placement: Placement) -> Mosaic | None:
        """Fiji's fused image with ``keep_fiji_mosaic``, refused when a placement was corrected."""
        if not self.keep_fiji_mosaic:
            return None
        if self._run is None:
            raise OfmTilingError(None, "Fiji has not run yet: call place() first")
        if placement.corrections:
            self.close()
            names = ", ".join(collection.names[k] for k in sorted(placement.corrections))
            raise OfmTilingError(None, f"Fiji's own mosaic was not kept: {len(placement.corrections)} tile(s) "
                                       f"needed correcting ({names}); fuse the checked positions instead "
                                       "(keep_fiji_mosaic=False)")
        shape, bands = self._run.fused()
        return Mosaic(shape, bands)

    def close(self) -> None:
        """Remove the temporary files of the last Fiji run."""
        if self._run is not None:
            self._run.close()
            self._run = None
