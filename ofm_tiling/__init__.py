"""ofm-tiling: collect and stitch OpenFlexure Microscope smart-stack scans."""
from .errors import OfmTilingError

__version__ = "0.1.0"
__all__ = ["OfmTilingError", "__version__"]
