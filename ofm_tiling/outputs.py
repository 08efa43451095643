"""Names of the files a run writes, in one place for the writers and the readers of a result."""

#: In the output folder (``SCAN/stitched`` by default).
MOSAIC = "mosaic.ome.tif"
PREVIEW = "preview.jpg"
REPORT = "stitching-report.json"
LAYOUT_PNG = "layout.png"
VIEWER = "viewer"
#: In ``use/``, beside the stage-derived ``TileConfiguration.txt``.
REGISTERED = "TileConfiguration.registered.txt"
