"""Former home of the mosaic writers, kept only while callers move (``stitch.py``, benchmarks):
the OME-TIFF pyramid is :mod:`ofm_tiling.pyramid`, the preview :mod:`ofm_tiling.preview`."""
from .preview import write_preview
from .pyramid import write_ome_tiff

__all__ = ["write_ome_tiff", "write_preview"]
