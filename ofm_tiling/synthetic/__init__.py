"""Synthetic microscope scans with ground truth, for tests, benchmarks and ``ofm-tiling example``.

`make_scan` writes a scan described by a `ScanSpec`: an OpenFlexure smart-stack scan (as the OFM
server writes it), a flat OFM scan (one folder of JPEGs with OFM metadata) or a folder of tiles
with a Fiji ``TileConfiguration.txt``; 8-bit RGB, 8-bit or 16-bit greyscale; plus ``truth.json``
and ``truth.png``, which scan readers ignore. `load_truth` reads the truth back.

Modules: `spec` (the ScanSpec and its checks), `scan` (make_scan), `capture` (what happens at each
position), `geometry` (stage grid and true positions), `texture` and `sample` (the canvas),
`noise` (random fields), `optics` (blur, illumination, sensor), `tiles` (rendering and writing
images), `ofm_metadata` (OFM JSON, EXIF and data.json), `truth` (ScanTruth, load_truth), `command`
(the options of ``ofm-tiling example``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports
from .spec import KINDS, LAYOUTS, MISTAGS, PIXEL_TYPES, TILE_FORMATS, ScanSpec

# Imported on first use, so `ofm-tiling --help` (which reads the spec's choices) stays light.
_LAZY = {"sample_image": "sample", "make_scan": "scan", "PositionTruth": "truth", "ScanTruth": "truth",
         "load_truth": "truth"}

__all__ = ["KINDS", "LAYOUTS", "MISTAGS", "PIXEL_TYPES", "TILE_FORMATS", "PositionTruth", "ScanSpec", "ScanTruth",
           "load_truth", "make_scan", "sample_image"]

if TYPE_CHECKING:
    from .sample import sample_image
    from .scan import make_scan
    from .truth import PositionTruth, ScanTruth, load_truth


__getattr__ = lazy_exports(__name__, _LAZY, globals())
