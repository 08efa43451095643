"""OpenFlexure metadata of one JPEG, read from its header only.

Every OFM server version stores one JSON document in EXIF ``UserComment``; the keys differ:

* v2: ``image.tags``, ``instrument.state.stage.position``,
  ``instrument.settings.extensions["org.openflexure.camera_stage_mapping"].image_to_stage_displacement``
  (calibrated on the 832 px wide preview stream) and, with a calibration extension,
  ``instrument.settings.extensions.usafcal.um_per_px``.
* v3: one key per component (``stage``, ``camera_stage_mapping`` with
  ``image_to_stage_displacement_matrix`` and ``image_resolution`` = [h, w]); an older v3 wrote the
  same keys wrapped in slashes (``/stage/``).

Only the JPEG header is read (markers up to the start of scan, plus the last bytes to see that
the file is complete), so a scan of hundreds of 8 MP images is indexed in well under a second.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import piexif

V2_CALIBRATION_WIDTH = 832  # v2 calibrated the camera-stage mapping on the 832x624 preview stream
_USER_COMMENT = piexif.ExifIFD.UserComment
_CHARSET_PREFIXES = (b"ASCII\0\0\0", b"UNICODE\0", b"JIS\0\0\0\0\0", b"\0" * 8)
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageMetadata:
    """What ofm-tiling needs to know about one captured image.

    Attributes
    ----------
    path : Path
        The JPEG file.
    width, height : int
        Image size in pixels, from the JPEG frame header.
    tags : tuple of str
        Tags from the OFM metadata (``central_image`` marks the plane to use).
    time : datetime or None
        Capture time: ``image.time``, else EXIF DateTimeOriginal or DateTime.
    stage : tuple of float or None
        Stage position (x, y, z) in motor steps.
    csm : ndarray or None
        2x2 camera-stage matrix: ``stage_xy = [d_row, d_col] @ csm`` at `csm_width`.
    csm_width : int or None
        Image width at which `csm` was calibrated.
    um_per_px : float or None
        Physical pixel size, when a calibration is recorded.
    layout : str
        ``"v2"``, ``"v3"``, ``"v3-slash"``, ``"unknown"`` (JSON of another shape) or ``"none"``.
    problem : str or None
        Why the OFM metadata could not be used (for notes), or None.
    complete : bool
        False when the file does not end with a JPEG end-of-image marker (truncated).
    """

    path: Path
    width: int
    height: int
    tags: tuple[str, ...] = ()
    time: datetime | None = None
    stage: tuple[float, float, float] | None = None
    csm: np.ndarray | None = field(default=None, compare=False)
    csm_width: int | None = None
    um_per_px: float | None = None
    layout: str = "none"
    problem: str | None = None
    complete: bool = True

    @property
    def is_central(self) -> bool:
        return "central_image" in self.tags


class HeaderError(ValueError):
    """The file is not a readable JPEG (message says why)."""


class JpegHeader(NamedTuple):
    """What a JPEG's header says without decoding it.

    Attributes
    ----------
    width, height : int
    exif : bytes or None
        The APP1 Exif payload (starting with ``Exif\\0\\0``), if any.
    complete : bool
        Whether the file ends with an end-of-image marker.
    """

    width: int
    height: int
    exif: bytes | None
    complete: bool


def read_jpeg_header(path: str | os.PathLike) -> JpegHeader:
    """Read a JPEG's size and EXIF block without decoding it.

    Returns
    -------
    JpegHeader

    Raises
    ------
    HeaderError
        The file is not a JPEG or its header is damaged.
    """
    exif = None
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            raise HeaderError("not a JPEG file (no start-of-image marker)")
        while True:
            head = f.read(4)
            if len(head) < 4:
                raise HeaderError("JPEG header is truncated")
            if head[0] != 0xFF:
                raise HeaderError("JPEG header is damaged (bad marker)")
            marker = head[1]
            while marker == 0xFF:  # fill bytes before a marker are allowed
                head = head[1:] + f.read(1)
                marker = head[1]
            (length,) = struct.unpack(">H", head[2:4])
            if length < 2:
                raise HeaderError("JPEG header is damaged (bad segment length)")
            if marker == 0xE1 and exif is None:
                payload = f.read(length - 2)
                if payload.startswith(b"Exif\0\0"):
                    exif = payload
            elif marker in _SOF_MARKERS:
                payload = f.read(length - 2)
                if len(payload) < 5:
                    raise HeaderError("JPEG header is truncated")
                height, width = struct.unpack(">HH", payload[1:5])
                break
            elif marker == 0xDA:
                raise HeaderError("JPEG has no frame header before the image data")
            else:
                f.seek(length - 2, os.SEEK_CUR)
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 256))
        complete = b"\xff\xd9" in f.read()
    if width == 0 or height == 0:
        raise HeaderError("JPEG frame header gives a zero image size")
    return JpegHeader(width, height, exif, complete)


def decode_user_comment(raw: bytes) -> str:
    """Text of an EXIF UserComment, with or without the 8-byte character-code prefix."""
    for prefix in _CHARSET_PREFIXES:
        if raw.startswith(prefix):
            body = raw[len(prefix):]
            if prefix == b"UNICODE\0":
                # UCS-2 in the byte order of the EXIF block; a JSON text starts with an ASCII '{'.
                encoding = "utf-16-le" if body[1:2] == b"\0" else "utf-16-be"
                return body.decode(encoding, errors="replace").strip("\0 \n\r\t")
            raw = body
            break
    return raw.decode("utf-8", errors="replace").strip("\0 \n\r\t")


def _get(d: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _component(d: dict, name: str) -> Any:
    """A v3 component under ``name`` or its older slash-wrapped key ``/name/``."""
    value = d.get(name)
    return d.get(f"/{name}/") if value is None else value


def _as_matrix(value: Any) -> np.ndarray | None:
    try:
        m = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    return m if m.shape == (2, 2) and np.all(np.isfinite(m)) and abs(np.linalg.det(m)) > 0 else None


def _as_stage(value: Any) -> tuple[float, float, float] | None:
    if isinstance(value, dict) and "x" in value and "y" in value:
        try:
            return float(value["x"]), float(value["y"]), float(value.get("z", 0) or 0)
        except (TypeError, ValueError):
            return None
    if isinstance(value, (list, tuple)) and len(value) in (2, 3):
        try:
            xs = [float(v) for v in value]
        except (TypeError, ValueError):
            return None
        return (xs[0], xs[1], xs[2] if len(xs) == 3 else 0.0)
    return None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    text = value.strip().replace("Z", "+00:00")
    for parse in (datetime.fromisoformat, lambda t: datetime.strptime(t, "%Y:%m:%d %H:%M:%S")):
        try:
            t = parse(text)
        except ValueError:
            continue
        return t.replace(tzinfo=None) if t.tzinfo is None else t.astimezone().replace(tzinfo=None)
    return None


def _find_key(d: Any, key: str, depth: int = 0) -> Any:
    """First value stored under `key` anywhere in nested dicts (for keys whose place varies)."""
    if depth > 6 or not isinstance(d, dict):
        return None
    if key in d:
        return d[key]
    for value in d.values():
        found = _find_key(value, key, depth + 1)
        if found is not None:
            return found
    return None


def parse_ofm_json(doc: dict) -> dict[str, Any]:
    """Pick the fields ofm-tiling uses out of an OFM metadata document (v2, v3 or v3-slash).

    Unknown keys are ignored; missing ones come back as None.
    """
    image: dict = doc["image"] if isinstance(doc.get("image"), dict) else {}
    extensions = _get(doc, "instrument", "settings", "extensions")
    if isinstance(extensions, dict) or isinstance(_get(doc, "instrument", "state"), dict):
        layout = "v2"
        stage = _as_stage(_get(doc, "instrument", "state", "stage", "position"))
        csm_block = _get(extensions, "org.openflexure.camera_stage_mapping") or {}
        csm = _as_matrix(csm_block.get("image_to_stage_displacement")) if isinstance(csm_block, dict) else None
        csm_width = V2_CALIBRATION_WIDTH if csm is not None else None
        um = _get(extensions, "usafcal", "um_per_px")
    else:
        layout = "v3-slash" if "/stage/" in doc or "/camera_stage_mapping/" in doc else "v3"
        stage = _as_stage(_get(_component(doc, "stage"), "position"))
        csm_block = _component(doc, "camera_stage_mapping")
        csm_block = csm_block if isinstance(csm_block, dict) else {}
        csm = _as_matrix(csm_block.get("image_to_stage_displacement_matrix")
                         or csm_block.get("image_to_stage_displacement"))
        resolution = csm_block.get("image_resolution")
        csm_width = None
        if csm is not None and isinstance(resolution, (list, tuple)) and len(resolution) >= 2:
            try:
                csm_width = int(resolution[1])
            except (TypeError, ValueError):
                csm_width = None
        um = None
        if stage is None and csm is None and not image:
            layout = "unknown"
    if um is None:
        um = _find_key(doc, "um_per_px")
    tags = image.get("tags") if isinstance(image.get("tags"), list) else doc.get("tags")
    tags = tuple(str(t) for t in tags) if isinstance(tags, list) else ()
    try:
        um = float(um) if um is not None and float(um) > 0 else None
    except (TypeError, ValueError):
        um = None
    return {"layout": layout, "tags": tags, "time": _parse_time(image.get("time")), "stage": stage,
            "csm": csm, "csm_width": csm_width, "um_per_px": um}


def read_metadata(path: str | os.PathLike) -> ImageMetadata:
    """Read the OFM metadata of one JPEG from its header.

    Raises
    ------
    HeaderError
        When the file is not a readable JPEG. Metadata that is missing or not JSON is not an
        error here: it is reported in ``ImageMetadata.problem`` so the caller can fall back.
    """
    path = Path(path)
    width, height, exif_bytes, complete = read_jpeg_header(path)
    if exif_bytes is None:
        return ImageMetadata(path, width, height, problem="no EXIF metadata", complete=complete)
    try:
        exif = piexif.load(exif_bytes)
    except Exception as exc:  # piexif raises assorted errors on damaged EXIF blocks
        return ImageMetadata(path, width, height, problem=f"EXIF block is damaged ({exc})", complete=complete)
    exif_time = None
    for ifd, tag in (("Exif", piexif.ExifIFD.DateTimeOriginal), ("0th", piexif.ImageIFD.DateTime)):
        raw = exif.get(ifd, {}).get(tag)
        if isinstance(raw, bytes) and exif_time is None:
            exif_time = _parse_time(raw.decode("ascii", errors="replace").strip("\0 "))
    raw = exif.get("Exif", {}).get(_USER_COMMENT)
    if not raw:
        return ImageMetadata(path, width, height, time=exif_time, problem="no EXIF UserComment", complete=complete)
    text = decode_user_comment(raw)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return ImageMetadata(path, width, height, time=exif_time,
                             problem=f"EXIF UserComment is not JSON ({exc.msg} at character {exc.pos})",
                             complete=complete)
    if not isinstance(doc, dict):
        return ImageMetadata(path, width, height, time=exif_time,
                             problem="EXIF UserComment JSON is not an object", complete=complete)
    fields = parse_ofm_json(doc)
    if fields["time"] is None:
        fields["time"] = exif_time
    return ImageMetadata(path, width, height, complete=complete, **fields)
