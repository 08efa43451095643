"""Fiji backend: Fiji's "Grid/Collection stitching" registers a collected scan, ofm-tiling checks it.

Modules by subject: `options` (the plugin's option strings), `grid` (Fiji's grid orders), `macro`
(the backend's macro and the shipped collect-and-stitch macro), `locate` (finding Fiji),
`run` (running it), `results` (reading its log, registered layout and fused image), `checks`
(Fiji's links and positions through the built-in rules), `backend` (`FijiBackend`) and `command`
(what ``ofm-tiling fiji-macro`` prints).
"""
from .backend import FijiBackend
from .command import fiji_macro
from .macro import install_macro

__all__ = ["FijiBackend", "fiji_macro", "install_macro"]
