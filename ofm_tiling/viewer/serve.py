"""Serve a viewer folder on 127.0.0.1 with Python's standard library only."""
from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import webbrowser
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("ofm_tiling")


class _QuietHandler(SimpleHTTPRequestHandler):
    """Serves files; requests are logged at debug level only (a page asks for hundreds of tiles)."""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.debug("viewer server: " + format, *args)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")  # a re-written viewer shows at once
        super().end_headers()


@dataclass
class ViewerServer:
    """A running server: `url` of the page; `stop()` ends it."""

    httpd: ThreadingHTTPServer
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def start_server(folder: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 0) -> ViewerServer:
    """Serve `folder` in a background thread at `host` and `port` (0: a free port)."""
    handler = functools.partial(_QuietHandler, directory=os.fspath(Path(folder)))
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="ofm-tiling-viewer", daemon=True)
    thread.start()
    return ViewerServer(httpd, thread, f"http://{host}:{httpd.server_address[1]}/index.html")


def has_display() -> bool:
    """Whether a graphical browser can open here (so `webbrowser` does not start a text browser)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def serve(folder: str | os.PathLike, *, port: int = 0, open_browser: bool = True) -> None:
    """Serve the viewer `folder` on 127.0.0.1 until Ctrl-C, printing its address first."""
    server = start_server(folder, port=port)
    print(f"Viewer at {server.url}  (Ctrl-C stops it)", flush=True)
    try:
        if open_browser and has_display():
            webbrowser.open(server.url)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
