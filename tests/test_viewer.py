"""The browser viewer: deep-zoom tiles against the OME-TIFF's pixels, and the page in headless Chromium."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import psnr, snapshot
from PIL import Image

from ofm_tiling.cli import main
from ofm_tiling.display import DisplayRange, display_range, to_display
from ofm_tiling.errors import OfmTilingError
from ofm_tiling.pixels import halve_u8
from ofm_tiling.pyramid import write_ome_tiff
from ofm_tiling.stitch import stitch
from ofm_tiling.viewer import find_result, is_current, write_viewer
from ofm_tiling.viewer.tiles import TILE, pyramid_for, tile_path, write_tiles

PIXEL_UM = 0.5
# Whole viewer tiles are the OME-TIFF's own JPEG tiles (exact); edge tiles and levels the file lacks are
# encoded once more as RGB JPEG at quality 90 (about 52 dB against the OME-TIFF on H&E-like mosaics);
# a tile one tile off gives < 20 dB.
TILE_PSNR = 35.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def result(scans, tmp_path_factory):
    """A stitched 3x2 scan (pixel size known) with its viewer written."""
    scan, _ = scans("viewer", grid=(3, 2), planes=1, pixel_size_um=PIXEL_UM)
    out = tmp_path_factory.mktemp("viewer") / "stitched"
    stitch(scan, out=out, use=out.parent / "use", check_focus=False)
    write_viewer(out)
    return out


def level_pixels(out: Path, level: int) -> np.ndarray:
    with tifffile.TiffFile(out / "mosaic.ome.tif") as tif:
        return tif.series[0].levels[level].asarray()


def assemble(root: Path, level: int, shape) -> np.ndarray:
    """A level put together from its JPEG tiles."""
    h, w = shape
    image = np.zeros((h, w, 3), np.uint8)
    for row in range(-(-h // TILE)):
        for col in range(-(-w // TILE)):
            tile = np.asarray(Image.open(tile_path(root, level, col, row)).convert("RGB"))
            y, x = row * TILE, col * TILE
            assert tile.shape == (min(TILE, h - y), min(TILE, w - x), 3)
            image[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return image


def viewer_data(out: Path) -> dict:
    text = (out / "viewer" / "viewer-data.js").read_text(encoding="utf-8")
    prefix = "window.OFM_VIEWER = "
    assert text.startswith(prefix) and text.rstrip().endswith(";")
    return json.loads(text[len(prefix):].rstrip().rstrip(";"))


# --- tiles ---------------------------------------------------------------------------------------

def test_tiles_at_every_level_equal_the_ome_tiff(result):
    data = viewer_data(result)
    with tifffile.TiffFile(result / "mosaic.ome.tif") as tif:
        stored = [lv.shape[:2] for lv in tif.series[0].levels]
    assert [tuple(s) for s in data["levels"]] == stored == list(pyramid_for(stored[0]).levels)
    assert max(stored[-1]) <= TILE  # the last level is one tile
    for k, shape in enumerate(stored):
        got = assemble(result / "viewer", k, shape)
        assert psnr(got, level_pixels(result, k)) > TILE_PSNR
    # A tile placed one tile off would not match.
    shifted = np.roll(assemble(result / "viewer", 0, stored[0]), TILE, axis=1)
    assert psnr(shifted, level_pixels(result, 0)) < 20


def test_levels_missing_from_the_file_are_made_by_halving(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(base).resize((1300, 1100), Image.BICUBIC))  # smooth: JPEG-friendly
    write_ome_tiff(tmp_path / "m.ome.tif", image.shape, [(0, image)], levels=1, compression="deflate")
    pyramid = write_tiles(tmp_path / "m.ome.tif", tmp_path / "v")
    assert pyramid.levels == ((1100, 1300), (550, 650), (275, 325))
    expected = image
    for k, shape in enumerate(pyramid.levels):
        assert psnr(assemble(tmp_path / "v", k, shape), expected) > 38
        expected = halve_u8(expected)


def _tall_bands(height: int, width: int, band: int):
    """A tall mosaic made band by band (never whole): smooth colour ramps plus a stripe per band."""
    x = np.arange(width)
    for y0 in range(0, height, band):
        y = np.arange(y0, min(height, y0 + band))[:, None]
        rows = np.empty((len(y), width, 3), np.uint8)
        rows[..., 0] = (y * 7 // 64 + x // 8) % 256
        rows[..., 1] = (128 + 100 * np.sin(y / 300.0 + x / 200.0)).astype(np.uint8)
        rows[..., 2] = ((y // 512 * 40) % 256)
        yield y0, rows


def test_tile_maker_memory_stays_bounded(tmp_path):
    height, width = 16000, 1600  # 77 MB at full resolution
    mosaic = tmp_path / "tall.ome.tif"
    write_ome_tiff(mosaic, (height, width, 3), _tall_bands(height, width, 700), quality=95, workers=1)
    tracemalloc.start()
    try:
        pyramid = write_tiles(mosaic, tmp_path / "v", workers=2)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full = height * width * 3
    assert peak < 12e6 < full / 6, f"peak {peak / 1e6:.1f} MB while making tiles of a {full / 1e6:.0f} MB mosaic"
    with tifffile.TiffFile(mosaic) as tif:
        for k, level in enumerate(tif.series[0].levels[:3]):
            assert psnr(assemble(tmp_path / "v", k, pyramid.levels[k]), level.asarray()) > 36


# --- the viewer folder -----------------------------------------------------------------------------

def test_viewer_data_names_the_scan_and_holds_the_overlay(result):
    data = viewer_data(result)
    report = json.loads((result / "stitching-report.json").read_text())
    assert data["title"] == "viewer"
    assert data["date"] == "scanned 2024-03-14 10:30"  # the generated scan's start
    assert data["pixel_size_um"] == pytest.approx(PIXEL_UM)
    assert [t["name"] for t in data["tiles"]] == [t["name"] for t in report["tiles"]]
    assert [(t["x"], t["y"]) for t in data["tiles"]] == [tuple(t["position"]) for t in report["tiles"]]
    assert {(t["w"], t["h"]) for t in data["tiles"]} == {(320, 240)}
    assert [(k["i"], k["j"], k["accepted"]) for k in data["links"]] == \
        [(k["i"], k["j"], k["accepted"]) for k in report["links"]]
    green_ish = [int(k["colour"][3:5], 16) > int(k["colour"][1:3], 16) for k in data["links"] if k["accepted"]]
    assert green_ish and all(green_ish)  # strong links are drawn green, not yellow


def test_write_viewer_changes_nothing_but_viewer_and_replaces_it_whole(result, tmp_path):
    out = tmp_path / "stitched"
    shutil.copytree(result, out)
    (out / "viewer" / "tiles" / "0" / "stale.jpg").write_bytes(b"old")
    before = snapshot(out, exclude=("viewer",))
    write_viewer(out, quality=50)
    assert snapshot(out, exclude=("viewer",)) == before
    assert not (out / "viewer" / "tiles" / "0" / "stale.jpg").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".ofm-tiling"]
    assert is_current(out)
    assert find_result(out) == out and find_result(out.parent) == out


def test_bad_folders_give_one_line_errors(tmp_path, capsys):
    with pytest.raises(OfmTilingError, match="holds no mosaic.ome.tif"):
        write_viewer(tmp_path)
    (tmp_path / "mosaic.ome.tif").write_text("not a tiff")
    with pytest.raises(OfmTilingError, match="not a readable TIFF"):
        write_viewer(tmp_path)
    assert not (tmp_path / "viewer").exists()
    assert main(["viewer", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ofm-tiling: error:") and "mosaic.ome.tif" in err and "\n" not in err
    with pytest.raises(ValueError, match="quality must be an integer from 1 to 100"):
        write_viewer(tmp_path, quality=0)


def test_cli_viewer_writes_the_viewer(result, tmp_path, capsys):
    out = tmp_path / "stitched"
    shutil.copytree(result, out, ignore=shutil.ignore_patterns("viewer"))
    assert main(["viewer", str(out)]) == 0
    assert "index.html" in capsys.readouterr().out
    assert viewer_data(out)["levels"] == viewer_data(result)["levels"]


# --- in a real browser -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def open_page(browser):
    """open_page(url) -> Page; closed after the test."""
    pages = []

    def open_(url: str) -> "Page":
        pages.append(Page(browser, url))
        return pages[-1]

    yield open_
    for page in pages:
        page.page.close()


class Page:
    """A viewer page in a 900x700 window, recording console errors."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 900, "height": 700})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.settle()

    def settle(self) -> None:
        self.page.wait_for_function("window.ofmViewer && window.ofmViewer.idle()", timeout=20000)

    def view(self) -> dict:
        return self.page.evaluate("ofmViewer.view()")

    def show(self, x0: float, y0: float, scale: float) -> None:
        self.page.evaluate(f"ofmViewer.show({x0}, {y0}, {scale})")
        self.settle()

    def screenshot(self) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(self.page.screenshot())).convert("RGB"))


def check_full_resolution(page: Page, out: Path, mosaic: np.ndarray | None = None) -> None:
    """At scale 1 the screen shows the mosaic's own pixels (or `mosaic`, e.g. as scaled for display):
    compare a 300x200 window in its middle."""
    mosaic = level_pixels(out, 0) if mosaic is None else mosaic
    if mosaic.ndim == 2:
        mosaic = np.repeat(mosaic[..., None], 3, axis=2)  # grey is shown as equal R, G and B
    sx, sy = 200, 200  # screen window clear of the bar, the scale bar and the overview
    mx, my = (mosaic.shape[1] - 300) // 2 | 1, (mosaic.shape[0] - 200) // 2 | 1  # odd: shows half-pixel slips
    page.show(mx - sx, my - sy, 1.0)
    assert page.view()["level"] == 0
    screen = page.screenshot()[sy:sy + 200, sx:sx + 300]
    truth = mosaic[my:my + 200, mx:mx + 300]
    assert psnr(screen, truth) > TILE_PSNR
    assert psnr(screen, mosaic[my + 1:my + 201, mx + 1:mx + 301]) < psnr(screen, truth) - 3


def test_page_from_file_shows_the_mosaic_at_full_resolution(open_page, result):
    page = open_page((result / "viewer" / "index.html").as_uri())
    v, (h, w) = page.view(), level_pixels(result, 0).shape[:2]
    # It opens on the whole mosaic.
    assert v["x0"] <= 0 and v["y0"] <= 0 and v["x0"] + 900 / v["scale"] >= w and v["y0"] + 700 / v["scale"] >= h
    page.show(0, 0, 0.3)
    assert page.view()["level"] == 1  # zoomed out, from a smaller level
    assert page.page.inner_text("#title") == "viewer"
    assert "2024-03-14" in page.page.inner_text("#date")
    check_full_resolution(page, result)
    assert page.errors == []


def test_zoom_by_double_click_wheel_and_keys_keeps_the_point(open_page, result):
    page = open_page((result / "viewer" / "index.html").as_uri())
    before = page.view()
    page.page.mouse.dblclick(300, 400)
    page.settle()
    after = page.view()
    assert after["scale"] == pytest.approx(2 * before["scale"])
    # The mosaic point under the pointer stays under it.
    for key in ("x0", "y0"):
        pos = 300 if key == "x0" else 400
        assert before[key] + pos / before["scale"] == pytest.approx(after[key] + pos / after["scale"], abs=0.5)
    page.page.mouse.move(450, 350)
    page.page.mouse.wheel(0, -300)
    page.settle()
    assert page.view()["scale"] > after["scale"] * 1.5
    page.page.keyboard.press("1")
    page.settle()
    assert page.view()["scale"] == pytest.approx(1.0) and page.view()["level"] == 0
    x_before = page.view()["x0"]
    page.page.keyboard.press("ArrowRight")
    page.settle()
    assert page.view()["x0"] > x_before
    page.page.keyboard.press("0")
    page.settle()
    assert page.view()["scale"] == pytest.approx(before["scale"])
    assert page.errors == []


def test_scale_bar_matches_the_pixel_size(open_page, result):
    page = open_page((result / "viewer" / "index.html").as_uri())
    for scale in (0.3, 1.0, 2.5):
        page.show(100, 100, scale)
        width = page.page.eval_on_selector("#scalebar-bar", "e => e.getBoundingClientRect().width")
        length = float(page.page.get_attribute("#scalebar-bar", "data-length"))
        label = page.page.inner_text("#scalebar-label")
        assert label in (f"{length:g} µm", f"{length / 1000:g} mm")
        assert width == pytest.approx(length / PIXEL_UM * scale, abs=0.6)
        assert 40 <= width <= 130
    assert page.errors == []


def test_scale_bar_in_pixels_without_a_pixel_size(open_page, scans, tmp_path):
    scan, _ = scans("viewer-nopx", grid=(2, 2), planes=1)
    out = tmp_path / "stitched"
    stitch(scan, out=out, use=tmp_path / "use", check_focus=False)
    write_viewer(out)
    page = open_page((out / "viewer" / "index.html").as_uri())
    page.show(0, 0, 0.5)
    width = page.page.eval_on_selector("#scalebar-bar", "e => e.getBoundingClientRect().width")
    length = float(page.page.get_attribute("#scalebar-bar", "data-length"))
    assert page.page.inner_text("#scalebar-label") == f"{length:g} px"
    assert width == pytest.approx(length * 0.5, abs=0.6)


def test_overlay_draws_tiles_and_links_in_their_colours(open_page, result):
    data = viewer_data(result)
    page = open_page((result / "viewer" / "index.html").as_uri())
    v = page.view()
    plain = page.screenshot()
    page.page.click("#overlay")
    page.settle()
    drawn = page.screenshot()
    assert page.page.get_attribute("#overlay", "aria-pressed") == "true"
    to_screen = lambda x, y: (round((x - v["x0"]) * v["scale"]), round((y - v["y0"]) * v["scale"]))
    for link in data["links"]:
        a, b = data["tiles"][link["i"]], data["tiles"][link["j"]]
        # A point a third of the way along the link, between tile centres.
        px, py = to_screen(a["x"] + a["w"] / 2 + (b["x"] - a["x"]) / 3, a["y"] + a["h"] / 2 + (b["y"] - a["y"]) / 3)
        colour = np.array([int(link["colour"][k:k + 2], 16) for k in (1, 3, 5)])
        patch = drawn[py - 2:py + 3, px - 2:px + 3].reshape(-1, 3).astype(int)
        assert np.abs(patch - colour).sum(axis=1).min() < 30, link
    # Tile outlines: the left edge of every tile changed.
    changed = np.abs(drawn.astype(int) - plain.astype(int)).sum(axis=2) > 60
    for t in data["tiles"]:
        x, y = to_screen(t["x"], t["y"] + t["h"] / 2)
        assert changed[y - 3:y + 4, x - 2:x + 3].any(), t["name"]
    page.page.keyboard.press("t")
    page.settle()
    # Off again (compared below the bar and the legend, where the button's focus ring does not show).
    assert psnr(page.screenshot()[120:480, :600], plain[120:480, :600]) > 50
    assert page.errors == []


def test_view_serves_the_page_over_http_until_ctrl_c(open_page, result, tmp_path):
    scan = tmp_path / "scan"
    shutil.copytree(result, scan / "stitched", ignore=shutil.ignore_patterns("viewer"))
    before = snapshot(scan, exclude=("viewer",))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    proc = subprocess.Popen([sys.executable, "-m", "ofm_tiling.cli", "view", str(scan), "--no-browser", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("Viewer at http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        url = line.split()[2]
        page = open_page(url)
        check_full_resolution(page, result)
        assert page.errors == []
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # It wrote the viewer (and only that), inside the output folder.
    assert is_current(scan / "stitched")
    files = lambda snap: {k: v for k, v in snap.items() if v[0] != "dir" and not k.startswith("stitched/viewer/")}
    assert files(snapshot(scan, exclude=())) == files(before) and len(files(before)) >= 5


def test_pinch_zooms_about_the_fingers(browser, result):
    page = browser.new_page(viewport={"width": 900, "height": 700}, has_touch=True, is_mobile=True)
    try:
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((result / "viewer" / "index.html").as_uri())
        page.wait_for_function("window.ofmViewer && window.ofmViewer.idle()")
        before = page.evaluate("ofmViewer.view()")
        cdp = page.context.new_cdp_session(page)

        def touch(kind, spread):
            points = [] if kind == "touchEnd" else [{"x": 450 - spread, "y": 400, "id": 0},
                                                    {"x": 450 + spread, "y": 400, "id": 1}]
            cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

        touch("touchStart", 50)
        for spread in range(60, 160, 10):
            touch("touchMove", spread)
        touch("touchMove", 150)
        touch("touchEnd", 150)
        page.wait_for_function("window.ofmViewer.idle()")
        after = page.evaluate("ofmViewer.view()")
        assert after["scale"] == pytest.approx(3 * before["scale"], rel=0.02)  # fingers 100 -> 300 px apart
        # The point between the fingers stays between them.
        assert before["x0"] + 450 / before["scale"] == pytest.approx(after["x0"] + 450 / after["scale"], abs=1)
        assert errors == []
    finally:
        page.close()


def test_double_tap_zooms_in_and_the_overview_moves_the_view(browser, result):
    page = browser.new_page(viewport={"width": 900, "height": 700}, has_touch=True, is_mobile=True)
    try:
        page.goto((result / "viewer" / "index.html").as_uri())
        page.wait_for_function("window.ofmViewer && window.ofmViewer.idle()")
        before = page.evaluate("ofmViewer.view()")
        page.touchscreen.tap(400, 300)
        page.touchscreen.tap(400, 300)
        page.wait_for_function("window.ofmViewer.idle()")
        after = page.evaluate("ofmViewer.view()")
        assert after["scale"] == pytest.approx(2 * before["scale"])
        assert before["x0"] + 400 / before["scale"] == pytest.approx(after["x0"] + 400 / after["scale"], abs=0.5)
        # A tap on the overview centres the view on that spot of the mosaic.
        box = page.eval_on_selector("#overview", "e => { const r = e.getBoundingClientRect(); "
                                                 "return [r.left, r.top, r.width, r.height]; }")
        data = viewer_data(result)
        page.touchscreen.tap(box[0] + box[2] * 0.25, box[1] + box[3] * 0.75)
        page.wait_for_function("window.ofmViewer.idle()")
        v = page.evaluate("ofmViewer.view()")
        assert v["x0"] + 450 / v["scale"] == pytest.approx(0.25 * data["width"], abs=data["width"] / box[2] + 1)
        assert v["y0"] + 350 / v["scale"] == pytest.approx(0.75 * data["height"], abs=data["height"] / box[3] + 1)
    finally:
        page.close()


# --- greyscale and 16-bit mosaics -----------------------------------------------------------------------

@pytest.fixture(scope="module", params=["grey8", "grey16"])
def grey_result(request, scans, tmp_path_factory):
    """An output folder (mosaic, preview, viewer) fused from generated grey tiles at their true positions."""
    from ofm_tiling.fuse import fuse_mosaic
    from ofm_tiling.pyramid import compression_for

    pixel_type = request.param
    folder, truth = scans(f"viewer-{pixel_type}", kind="tileconfig", grid=(3, 3), pixel_type=pixel_type,
                          tile_format="png" if pixel_type == "grey16" else "jpeg", source="procedural")
    out = tmp_path_factory.mktemp(f"viewer-{pixel_type}") / "stitched"
    out.mkdir()
    mosaic = fuse_mosaic([folder / p.central_file for p in truth.positions], truth.true_xy_array(),
                         truth.tile_shape, pixel_type=pixel_type)
    info = write_ome_tiff(out / "mosaic.ome.tif", mosaic.shape, mosaic.bands, pixel_type=pixel_type,
                          compression=compression_for("jpeg", pixel_type)[0], preview_path=out / "preview.jpg",
                          name=f"viewer-{pixel_type}")
    write_viewer(out)
    return out, pixel_type, DisplayRange(*info["display_range"])


def assemble_grey(root: Path, level: int, shape) -> np.ndarray:
    h, w = shape
    image = np.zeros((h, w), np.uint8)
    for row in range(-(-h // TILE)):
        for col in range(-(-w // TILE)):
            with Image.open(tile_path(root, level, col, row)) as tile:
                assert tile.mode == "L"  # one-channel JPEG
                pixels = np.asarray(tile)
            image[row * TILE:row * TILE + pixels.shape[0], col * TILE:col * TILE + pixels.shape[1]] = pixels
    return image


def test_grey_viewer_tiles_are_the_mosaic_scaled_for_display(grey_result):
    out, pixel_type, window = grey_result
    with tifffile.TiffFile(out / "mosaic.ome.tif") as tif:
        levels = [lv.asarray() for lv in tif.series[0].levels]
        stored = tif.series[0].levels[0].keyframe
        tif.filehandle.seek(stored.dataoffsets[0])
        first_tile = tif.filehandle.read(stored.databytecounts[0])
    assert levels[0].dtype == (np.uint16 if pixel_type == "grey16" else np.uint8)
    assert window == display_range(levels[-1]) and window.is_identity == (pixel_type == "grey8")
    pyramid = pyramid_for(levels[0].shape)
    assert len(pyramid.levels) == len(levels) == 2
    for k, level in enumerate(levels):
        shown = to_display(level, window)
        got = assemble_grey(out / "viewer", k, level.shape)
        assert psnr(got, shown) > TILE_PSNR  # re-encoded at quality 90 (grey16), or the stored tiles (grey8)
        assert psnr(np.roll(got, 7, axis=1), shown) < psnr(got, shown) - 6
    if pixel_type == "grey8":  # whole grey JPEG tiles are copied as stored
        assert tile_path(out / "viewer", 0, 0, 0).read_bytes() == first_tile
    with Image.open(out / "preview.jpg") as im:  # the preview uses the same range
        preview = np.asarray(im)
    small = np.asarray(Image.fromarray(to_display(levels[0], window)).resize(preview.shape[::-1], Image.LANCZOS))
    assert im.mode == "L" and psnr(preview, small) > 35


def test_grey_page_shows_the_display_scaled_mosaic(open_page, grey_result):
    out, _, window = grey_result
    page = open_page((out / "viewer" / "index.html").as_uri())
    check_full_resolution(page, out, to_display(level_pixels(out, 0), window))
    assert page.errors == []
