"""ofm-tiling: collect and stitch OpenFlexure Microscope smart-stack scans.

The public façade mirrors the command line::

    import ofm_tiling
    collection = ofm_tiling.collect("scan")          # SCAN/use/, like `ofm-tiling collect`
    result = ofm_tiling.stitch("scan")               # SCAN/stitched/, like `ofm-tiling stitch`

The stages are modules of their own, in pipeline order: `scan` and `metadata` (reading),
`collect`, `layout` and `tileconfig`, `register`, `solve`, `fuse`, `pyramid` and `preview`, `report`; `backend`
and `fiji` (the two backends), `focus`, `synthetic`. Names are imported on first use, so the
command line starts without loading numpy or Pillow.
"""
from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from .lazy import lazy_exports

__version__ = "0.1.0"

# Public name -> module that defines it.
_EXPORTS = {
    "collect": "collect", "Collection": "collect", "Tile": "collect",
    "stitch": "stitch", "StitchResult": "stitch",
    "Scan": "scan", "read_scan": "scan",
    "OfmTilingError": "errors", "OptionError": "errors",
    "CollectOptions": "options", "StitchOptions": "options",
    "Placement": "placement", "Link": "placement",
}
__all__ = ["CollectOptions", "Collection", "Link", "OfmTilingError", "OptionError", "Placement", "Scan",
           "StitchOptions", "StitchResult", "Tile", "__version__", "collect", "read_scan", "stitch"]

if TYPE_CHECKING:
    from .collect import Collection, Tile, collect
    from .errors import OfmTilingError, OptionError
    from .options import CollectOptions, StitchOptions
    from .placement import Link, Placement
    from .scan import Scan, read_scan
    from .stitch import StitchResult, stitch


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())


class _Package(types.ModuleType):
    """This package, with `collect` and `stitch` always the functions.

    Importing the submodules of the same names would otherwise replace the façade functions with
    the modules (the import system sets a submodule as an attribute of its package).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("collect", "stitch") and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
