"""ofm-tiling: collect and stitch OpenFlexure Microscope smart-stack scans.

The public façade mirrors the command line::

    import ofm_tiling
    collection = ofm_tiling.collect("scan")          # SCAN/use/, like `ofm-tiling collect`
    result = ofm_tiling.stitch("scan")               # SCAN/stitched/, like `ofm-tiling stitch`

The stages are modules of their own: `scan` and `metadata` (reading), `collect`, `layout` and
`tileconfig`, `register`, `solve`, `fuse`, `writers`, `report`, `focus`, `fiji`, `synthetic`.
"""
from .collect import Collection, Tile
from .collect import collect as collect
from .errors import OfmTilingError
from .scan import Scan, read_scan
from .stitch import StitchResult
from .stitch import stitch as stitch

__version__ = "0.1.0"
__all__ = ["Collection", "OfmTilingError", "Scan", "StitchResult", "Tile", "__version__", "collect",
           "read_scan", "stitch"]
