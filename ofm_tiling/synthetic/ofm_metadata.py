"""OpenFlexure metadata as the server writes it: the image JSON (v2 / v3 layouts) in EXIF, and data.json files.

The JSON document of every image goes into EXIF UserComment (raw, or with the standard 8-byte
``ASCII\\0\\0\\0`` prefix). v2 nests everything under ``instrument`` (camera-stage matrix
calibrated at 832 px width); v3 has one key per component (``stage``, ``camera_stage_mapping``
with ``image_resolution``), older v3 wrapped those keys in slashes (``/stage/``).
"""
from __future__ import annotations

import json
import math
import random
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import piexif

STACK_DZ = 50  # z steps between planes of a smart stack
CALIBRATION_HW = {"v2": (624, 832), "v3": (616, 820), "v3-slash": (616, 820)}  # (h, w) of the CSM images
# Steps per calibration pixel at 832 px width: ~3.7 makes the v2 default stride of 2000x1500 steps a
# 35% overlap, as on a real OFM. x follows image columns (flipped), y follows rows.
_STEPS_PER_PX = (3.72, 3.66)
_USER_COMMENT_PREFIX = b"ASCII\0\0\0"
_FAILED_TRACEBACK = ("Traceback (most recent call last):\n  File \"smart_scan.py\", line 412, in take_stack\n"
                     "    self.autofocus()\nTimeoutError: Sangaboard did not reply within 60 s\n")


@dataclass(frozen=True)
class MetadataContext:
    """What every image's metadata of one scan shares."""

    layout: str
    csm: np.ndarray
    calibration_hw: tuple[int, int]
    pixel_size_um: float | None
    dataset: dict[str, Any]
    tile_shape: tuple[int, int]
    instrument_id: str
    prefix: bool
    write_datetime: bool


def camera_stage_matrix(calibration_width: int, rotation_deg: float = 1.1) -> np.ndarray:
    """A realistic camera-stage matrix at `calibration_width`, rounded as written to the metadata.

    The matrix swaps axes (stage x follows image columns, flipped; y follows rows), is rotated by
    `rotation_deg` and slightly anisotropic, so transposition or sign mistakes show at once.
    """
    a = math.radians(rotation_deg)
    rotation = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    swap = np.array([[0.0, 1.0], [-1.0, 0.0]])
    m = swap @ rotation * np.array(_STEPS_PER_PX) * (832 / calibration_width)
    return np.round(m, 5)


def random_uuid(rnd: random.Random) -> str:
    return str(uuid.UUID(int=rnd.getrandbits(128), version=4))


def iso(t: datetime) -> str:
    return t.isoformat(timespec="microseconds")


def tagged_planes(kind: str | None, k_focus: int, planes: int, rnd: random.Random) -> list[int]:
    """Planes whose metadata carries ``central_image`` for a mistag kind (None: the right one)."""
    if kind in ("none", "bad_json"):
        return []
    if kind == "several":
        return sorted({k_focus, rnd.choice([k for k in range(planes) if k != k_focus])})
    if kind == "wrong":
        return [rnd.choice([k for k in range(planes) if abs(k - k_focus) >= min(2, planes - 1)])]
    return [k_focus]


def image_exif(ctx: MetadataContext, *, name: str, when: datetime, stage: dict[str, int], tags: list[str],
               bad_json: bool, rnd: random.Random) -> bytes:
    """EXIF block of one image: the OFM JSON in UserComment, camera make and optional date."""
    image = {"id": random_uuid(rnd), "name": name, "time": iso(when), "format": "jpeg", "tags": tags,
             "annotations": {}}
    doc = _image_doc(ctx, image=image, stage=stage)
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    if bad_json:  # a damaged write: the JSON stops half way
        text = text[: len(text) // 2]
    comment = (_USER_COMMENT_PREFIX if ctx.prefix else b"") + text
    return _exif_bytes(ctx.layout, comment, when, ctx.write_datetime)


def _image_doc(ctx: MetadataContext, *, image: dict[str, Any], stage: dict[str, int]) -> dict[str, Any]:
    """The OFM metadata document of one image in the context's layout."""
    matrix = ctx.csm.tolist()
    if ctx.layout == "v2":
        extensions: dict[str, Any] = {
            "org.openflexure.camera_stage_mapping": {"image_to_stage_displacement": matrix,
                                                     "backlash_vector": [0, 0, 0], "backlash_compensation": True},
            "org.openflexure.autofocus": {"dz": 2000, "backlash": 256},
        }
        if ctx.pixel_size_um is not None:
            extensions["usafcal"] = {"um_per_px": ctx.pixel_size_um}
        return {"image": image, "dataset": ctx.dataset,
                "instrument": {"id": ctx.instrument_id, "name": "OpenFlexure Microscope",
                               "settings": {"extensions": extensions,
                                            "camera": {"picamera": {"exposure_speed": 14800, "awb_mode": "off"}}},
                               "state": {"stage": {"position": stage}, "camera": {"stream_active": True}}}}
    key = (lambda name: f"/{name}/") if ctx.layout == "v3-slash" else (lambda name: name)
    camera = {"exposure_time": 14800, "analog_gain": 1.0, "digital_gain": 1.0, "awb_gains": [1.62, 1.38],
              "resolution": list(ctx.tile_shape)}
    doc = {"image": image,
           key("stage"): {"position": stage, "moving": False},
           key("camera_stage_mapping"): {"image_to_stage_displacement_matrix": matrix,
                                         "image_resolution": list(ctx.calibration_hw),
                                         "backlash_vector": [0, 0, 0]},
           key("camera"): camera,
           key("smart_scan"): {"scan_name": ctx.dataset["name"], "scan_id": ctx.dataset["id"]}}
    if ctx.pixel_size_um is not None:  # v3 has no known key for it; readers look for "um_per_px" anywhere
        doc[key("usafcal")] = {"um_per_px": ctx.pixel_size_um}
    return doc


def _exif_bytes(layout: str, comment: bytes, when: datetime, write_datetime: bool) -> bytes:
    zeroth: dict[int, Any] = {}
    exif: dict[int, Any] = {piexif.ExifIFD.UserComment: comment}
    if layout == "v2":
        zeroth.update({piexif.ImageIFD.Make: b"RaspberryPi", piexif.ImageIFD.Model: b"RP_imx219"})
    else:
        zeroth[piexif.ImageIFD.Make] = b"OpenFlexure"
    if write_datetime:
        stamp = when.strftime("%Y:%m:%d %H:%M:%S").encode()
        zeroth[piexif.ImageIFD.DateTime] = stamp
        exif[piexif.ExifIFD.DateTimeOriginal] = stamp
    return piexif.dump({"0th": zeroth, "Exif": exif})


def position_doc(*, when: datetime, stage_xyz: tuple[int, int, int], files: list[str], stack_z: list[int]
                 ) -> dict[str, Any]:
    """``data.json`` of a completed smart-stack position (`stage_xyz` z: where autofocus put the stack)."""
    x, y, z_af = stage_xyz
    return {"status": "complete", "time": iso(when), "position": {"x": x, "y": y, "z": z_af}, "images": files,
            "focus": {"method": "fast_autofocus", "autofocus_z": z_af, "stack_dz": STACK_DZ, "stack_z": stack_z}}


def failed_doc(*, when: datetime, stage_xyz: tuple[int, int, int], error: str) -> dict[str, Any]:
    """``data.json`` of the position where a smart-stack scan failed."""
    x, y, z = stage_xyz
    return {"status": "failed", "error": error, "time": iso(when), "position": {"x": x, "y": y, "z": z},
            "images": [], "traceback": _FAILED_TRACEBACK}


def scan_doc(*, dataset: dict[str, Any], settings: dict[str, Any], started: datetime, finished: datetime | None,
             layout: str, planned: int, completed: int) -> dict[str, Any]:
    """The scan folder's ``data.json`` (``finished`` None: the scan failed)."""
    return {"name": dataset["name"], "id": dataset["id"], "type": "smart_stack_scan",
            "started": iso(started), "finished": None if finished is None else iso(finished),
            "status": "failed" if finished is None else "complete",
            "software": {"name": "openflexure-microscope-server", "version": "2.11.0" if layout == "v2" else "3.0.0"},
            "settings": settings, "positions": {"planned": planned, "completed": completed}}
