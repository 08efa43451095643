// ofm-tiling mosaic viewer: deep-zoom JPEG tiles drawn on a canvas. Written for ofm-tiling; no
// libraries. Works from file:// (its data comes from viewer-data.js through a script tag) and
// from any static web server.
(function () {
  "use strict";
  const D = window.OFM_VIEWER;
  const $ = (id) => document.getElementById(id);
  if (!D || D.format !== "ofm-tiling viewer") {
    const m = $("message");
    m.hidden = false;
    m.textContent = "viewer-data.js is missing or not from ofm-tiling: write the viewer again with `ofm-tiling viewer`.";
    return;
  }

  const canvas = $("view"), ctx = canvas.getContext("2d");
  const inset = $("overview"), ictx = inset.getContext("2d");
  const TOP = D.levels.length - 1;          // coarsest level: one tile
  const FADE_MS = 180, ANIM_MS = 260, MAX_ZOOM = 8;
  const tiles = new Map();                  // "k/c/r" -> {img, ready, failed, shown}
  const view = { x0: 0, y0: 0, scale: 1 };  // level-0 pixel at the top-left corner; CSS px per level-0 px
  let dpr = 1, cssW = 1, cssH = 1, anim = null, pending = false, overlayOn = false, wanted = [];

  const barHeight = () => $("bar").offsetHeight;

  // --- tiles ------------------------------------------------------------------------------------
  function tile(k, c, r) {
    const key = k + "/" + c + "/" + r;
    let t = tiles.get(key);
    if (!t) {
      t = { img: new Image(), ready: false, failed: false, shown: 0 };
      t.img.onload = () => { t.ready = true; t.shown = performance.now(); redraw(); };
      t.img.onerror = () => { t.failed = true; };
      t.img.src = D.tile_folder + "/" + k + "/" + c + "_" + r + ".jpg";
      tiles.set(key, t);
    }
    return t;
  }

  function levelFor(scale) {  // finest needed: at least one tile pixel per device pixel
    const k = Math.floor(Math.log2(1 / (scale * dpr)) + 1e-9);
    return Math.max(0, Math.min(TOP, k));
  }

  function visible(k) {  // tile columns and rows of level k on screen
    const f = D.tile * Math.pow(2, k), lw = D.levels[k][1], lh = D.levels[k][0];
    const x1 = view.x0 + cssW / view.scale, y1 = view.y0 + cssH / view.scale;
    return {
      c0: Math.max(0, Math.floor(view.x0 / f)), c1: Math.min(Math.ceil(lw / D.tile), Math.ceil(x1 / f)),
      r0: Math.max(0, Math.floor(view.y0 / f)), r1: Math.min(Math.ceil(lh / D.tile), Math.ceil(y1 / f)),
    };
  }

  // Screen (device pixel) position of a level-0 coordinate, rounded so neighbours share edges.
  const sx = (x) => Math.round((x - view.x0) * view.scale * dpr);
  const sy = (y) => Math.round((y - view.y0) * view.scale * dpr);

  function drawLevel(k, now, request) {
    const v = visible(k), f = Math.pow(2, k), T = D.tile, lw = D.levels[k][1], lh = D.levels[k][0];
    let fading = false;
    for (let r = v.r0; r < v.r1; r++) {
      for (let c = v.c0; c < v.c1; c++) {
        const t = request ? tile(k, c, r) : tiles.get(k + "/" + c + "/" + r);
        if (request) wanted.push(t);
        if (!t || !t.ready) continue;
        const a = Math.min(1, (now - t.shown) / FADE_MS);
        if (a < 1) fading = true;
        const left = sx(c * T * f), top = sy(r * T * f);
        const right = sx(Math.min((c + 1) * T, lw) * f), bottom = sy(Math.min((r + 1) * T, lh) * f);
        ctx.globalAlpha = a;
        ctx.drawImage(t.img, left, top, right - left, bottom - top);
      }
    }
    ctx.globalAlpha = 1;
    return fading;
  }

  // --- drawing ----------------------------------------------------------------------------------
  function redraw() {
    if (!pending) { pending = true; requestAnimationFrame(frame); }
  }

  function frame(now) {
    pending = false;
    if (anim) step(now);
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#202124";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.imageSmoothingEnabled = view.scale * dpr < 2;  // magnified: show the pixels as they are
    ctx.imageSmoothingQuality = "high";
    const k = levelFor(view.scale);
    wanted = [];
    let fading = false;
    // Coarser levels first, so the screen is never empty while finer tiles arrive.
    for (let j = TOP; j > k; j--) drawLevel(j, now, j === TOP);
    fading = drawLevel(k, now, true);
    if (overlayOn) drawOverlay();
    drawInset();
    drawScaleBar();
    if (anim || fading) redraw();
  }

  function drawOverlay() {
    const s = view.scale * dpr, lw = Math.max(1, 1.5 * dpr);
    ctx.lineWidth = lw;
    ctx.font = Math.round(12 * dpr) + "px system-ui, sans-serif";
    for (const t of D.tiles) {
      ctx.strokeStyle = "rgba(90, 170, 255, 0.9)";
      ctx.setLineDash([]);
      ctx.strokeRect(sx(t.x), sy(t.y), t.w * s, t.h * s);
      if (t.w * s > 70 * dpr) {  // names only where they fit; dark outline keeps them readable
        ctx.strokeStyle = "rgba(0, 0, 0, 0.8)";
        ctx.strokeText(t.name, sx(t.x) + 4 * dpr, sy(t.y) + 14 * dpr);
        ctx.fillStyle = "rgb(150, 200, 255)";
        ctx.fillText(t.name, sx(t.x) + 4 * dpr, sy(t.y) + 14 * dpr);
      }
    }
    ctx.lineWidth = 3 * dpr;
    for (const l of D.links) {
      const a = D.tiles[l.i], b = D.tiles[l.j];
      ctx.strokeStyle = l.colour;
      ctx.setLineDash(l.accepted ? [] : [6 * dpr, 5 * dpr]);
      ctx.beginPath();
      ctx.moveTo(sx(a.x + a.w / 2), sy(a.y + a.h / 2));
      ctx.lineTo(sx(b.x + b.w / 2), sy(b.y + b.h / 2));
      ctx.stroke();
    }
    ctx.setLineDash([]);
  }

  function insetSize() {
    const side = Math.min(200, Math.max(90, Math.min(cssW, cssH) * 0.25));
    const f = side / Math.max(D.width, D.height);
    return { w: Math.max(1, Math.round(D.width * f)), h: Math.max(1, Math.round(D.height * f)), f };
  }

  function drawInset() {
    if (inset.hidden) return;
    const s = insetSize(), t = tile(TOP, 0, 0);
    ictx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ictx.fillStyle = "#000";
    ictx.fillRect(0, 0, s.w, s.h);
    if (t.ready) ictx.drawImage(t.img, 0, 0, s.w, s.h);
    ictx.strokeStyle = "#ff3";
    ictx.lineWidth = 1.5;
    ictx.strokeRect(view.x0 * s.f, view.y0 * s.f, (cssW / view.scale) * s.f, (cssH / view.scale) * s.f);
  }

  function niceLength(max) {  // largest 1, 2 or 5 x 10^n not above max
    const p = Math.pow(10, Math.floor(Math.log10(max)));
    return [5, 2, 1].map((m) => m * p).find((v) => v <= max) || p;
  }

  function drawScaleBar() {
    const perCss = (D.pixel_size_um || 1) / view.scale;  // um (or pixels) per CSS pixel
    const length = niceLength(120 * perCss);
    let label;
    if (!D.pixel_size_um) label = length + " px";
    else if (length >= 1000) label = length / 1000 + " mm";
    else label = length + " \u00b5m";
    const bar = $("scalebar-bar");
    bar.style.width = (length / perCss).toFixed(2) + "px";
    bar.dataset.length = String(length);
    $("scalebar-label").textContent = label;
  }

  // --- view changes -----------------------------------------------------------------------------
  function fitScale() { return Math.min(cssW / D.width, (cssH - barHeight()) / D.height) * 0.95; }
  function clampScale(s) { return Math.min(MAX_ZOOM, Math.max(fitScale() / 4, s)); }

  function clampView() {  // keep the mosaic's centre part reachable: never lose it off screen
    const vw = cssW / view.scale, vh = cssH / view.scale;
    view.x0 = Math.min(D.width - vw * 0.1, Math.max(-vw * 0.9, view.x0));
    view.y0 = Math.min(D.height - vh * 0.1, Math.max(-vh * 0.9, view.y0));
  }

  // Set the scale so that mosaic point (ix, iy) sits at screen point (px, py) (CSS pixels).
  function place(scale, ix, iy, px, py) {
    view.scale = clampScale(scale);
    view.x0 = ix - px / view.scale;
    view.y0 = iy - py / view.scale;
    clampView();
    redraw();
  }

  function animateTo(scale, ix, iy, px, py) {
    const s0 = view.scale, s1 = clampScale(scale);
    const from = [(ix - view.x0) * s0, (iy - view.y0) * s0];  // where (ix, iy) is now on screen
    anim = { t0: performance.now(), s0, s1, ix, iy, from, to: [px, py] };
    redraw();
  }

  function step(now) {
    const u = Math.min(1, (now - anim.t0) / ANIM_MS), e = 1 - Math.pow(1 - u, 3);
    const s = anim.s0 * Math.pow(anim.s1 / anim.s0, e);
    const a = anim;
    if (u >= 1) anim = null;
    place(s, a.ix, a.iy, a.from[0] + (a.to[0] - a.from[0]) * e, a.from[1] + (a.to[1] - a.from[1]) * e);
  }

  const centre = () => [view.x0 + cssW / 2 / view.scale, view.y0 + cssH / 2 / view.scale];
  function zoomBy(f, px, py) {
    if (px === undefined) { px = cssW / 2; py = cssH / 2; }
    anim = null;
    animateTo(view.scale * f, view.x0 + px / view.scale, view.y0 + py / view.scale, px, py);
  }
  function fit(animated) {
    const s = fitScale(), top = barHeight(), y = top + (cssH - top) / 2;
    if (animated) animateTo(s, D.width / 2, D.height / 2, cssW / 2, y);
    else place(s, D.width / 2, D.height / 2, cssW / 2, y);
  }
  function full() { const c = centre(); animateTo(1 / dpr, c[0], c[1], cssW / 2, cssH / 2); }
  function panBy(dx, dy) { const c = centre(); animateTo(view.scale, c[0], c[1], cssW / 2 - dx, cssH / 2 - dy); }

  // --- input ------------------------------------------------------------------------------------
  const pointers = new Map();
  let pinch = null, lastTap = null, lastTouchZoom = -Infinity;

  function pinchState() {
    const [a, b] = [...pointers.values()];
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2;
    return { d: Math.hypot(a.x - b.x, a.y - b.y) || 1, mx, my,
             ix: view.x0 + mx / view.scale, iy: view.y0 + my / view.scale, scale: view.scale };
  }

  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    canvas.focus();
    anim = null;
    pointers.set(e.pointerId, { x: e.offsetX, y: e.offsetY, x0: e.offsetX, y0: e.offsetY, t: e.timeStamp });
    pinch = pointers.size === 2 ? pinchState() : null;
    canvas.classList.add("dragging");
  });
  canvas.addEventListener("pointermove", (e) => {
    const p = pointers.get(e.pointerId);
    if (!p) return;
    const dx = e.offsetX - p.x, dy = e.offsetY - p.y;
    p.x = e.offsetX; p.y = e.offsetY;
    if (pinch && pointers.size === 2) {
      const now = pinchState();
      place(pinch.scale * now.d / pinch.d, pinch.ix, pinch.iy, now.mx, now.my);
    } else if (pointers.size === 1) {
      view.x0 -= dx / view.scale; view.y0 -= dy / view.scale;
      clampView(); redraw();
    }
  });
  function release(e) {
    const p = pointers.get(e.pointerId);
    if (!p) return;
    pointers.delete(e.pointerId);
    if (pointers.size < 2) pinch = null;
    if (pointers.size === 0) canvas.classList.remove("dragging");
    // A double tap zooms in on touch screens (where dblclick may not come).
    if (e.type === "pointerup" && e.pointerType === "touch" && Math.hypot(p.x - p.x0, p.y - p.y0) < 10) {
      if (lastTap && e.timeStamp - lastTap.t < 320 && Math.hypot(p.x - lastTap.x, p.y - lastTap.y) < 30) {
        zoomBy(2, p.x, p.y); lastTap = null; lastTouchZoom = e.timeStamp;
      } else lastTap = { t: e.timeStamp, x: p.x, y: p.y };
    }
  }
  canvas.addEventListener("pointerup", release);
  canvas.addEventListener("pointercancel", release);
  canvas.addEventListener("dblclick", (e) => {
    if (e.timeStamp - lastTouchZoom < 600) return;
    zoomBy(e.shiftKey ? 0.5 : 2, e.offsetX, e.offsetY);
  });
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? cssH : 1;
    anim = null;
    const f = Math.exp(-e.deltaY * unit * 0.002);
    place(view.scale * f, view.x0 + e.offsetX / view.scale, view.y0 + e.offsetY / view.scale, e.offsetX, e.offsetY);
  }, { passive: false });

  window.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const move = Math.min(cssW, cssH) / 4;
    const actions = {
      ArrowLeft: () => panBy(-move, 0), ArrowRight: () => panBy(move, 0),
      ArrowUp: () => panBy(0, -move), ArrowDown: () => panBy(0, move),
      "+": () => zoomBy(2), "=": () => zoomBy(2), "-": () => zoomBy(0.5), _: () => zoomBy(0.5),
      0: () => fit(true), 1: full, t: toggleOverlay, o: toggleInset, "?": toggleHelp,
    };
    const act = actions[e.key];
    if (act) { e.preventDefault(); act(); }
  });

  function insetMove(e) {
    const s = insetSize();
    animateTo(view.scale, e.offsetX / s.f, e.offsetY / s.f, cssW / 2, cssH / 2);
  }
  inset.addEventListener("pointerdown", (e) => { inset.setPointerCapture(e.pointerId); insetMove(e); });
  inset.addEventListener("pointermove", (e) => { if (inset.hasPointerCapture(e.pointerId)) { anim = null; insetMove(e); } });

  function toggleOverlay(on) {
    overlayOn = typeof on === "boolean" ? on : !overlayOn;
    $("overlay").setAttribute("aria-pressed", String(overlayOn));
    $("legend").hidden = !overlayOn;
    redraw();
  }
  function toggleInset() { inset.hidden = !inset.hidden; redraw(); }
  function toggleHelp() { $("help").hidden = !$("help").hidden; }

  $("zoom-in").onclick = () => zoomBy(2);
  $("zoom-out").onclick = () => zoomBy(0.5);
  $("fit").onclick = () => fit(true);
  $("full").onclick = full;
  $("overlay").onclick = () => toggleOverlay();
  $("help-button").onclick = toggleHelp;
  if (!D.tiles.length) $("overlay").disabled = true;

  function resize() {
    const c = centre();
    dpr = window.devicePixelRatio || 1;
    cssW = Math.max(1, canvas.clientWidth); cssH = Math.max(1, canvas.clientHeight);
    canvas.width = Math.round(cssW * dpr); canvas.height = Math.round(cssH * dpr);
    $("legend").style.top = barHeight() + 6 + "px";  // below the bar, however it wrapped
    const s = insetSize();
    inset.style.width = s.w + "px"; inset.style.height = s.h + "px";
    inset.width = Math.round(s.w * dpr); inset.height = Math.round(s.h * dpr);
    if (started) place(view.scale, c[0], c[1], cssW / 2, cssH / 2);
  }

  // --- start ------------------------------------------------------------------------------------
  let started = false;
  document.title = D.title + " \u2013 mosaic viewer";
  $("title").textContent = D.title;
  $("date").textContent = D.date;
  $("summary").textContent = D.summary;
  window.addEventListener("resize", resize);
  resize();
  fit(false);
  started = true;
  canvas.focus();

  // For scripts and tests: read and set the view, and know when everything asked for is drawn.
  window.ofmViewer = {
    view: () => ({ x0: view.x0, y0: view.y0, scale: view.scale, level: levelFor(view.scale), dpr }),
    show: (x0, y0, scale) => { anim = null; view.scale = clampScale(scale); view.x0 = x0; view.y0 = y0; redraw(); },
    overlay: (on) => toggleOverlay(on),
    idle: () => !anim && !pending && wanted.every((t) => t.ready || t.failed)
      && wanted.every((t) => performance.now() - t.shown > FADE_MS),
  };
})();
