import json

import numpy as np
import piexif
import pytest
from PIL import Image

from ofm_tiling.metadata import HeaderError, decode_user_comment, parse_ofm_json, read_jpeg_header, read_metadata

CSM = [[0.05, -2.4], [2.4, 0.05]]
V2 = {"image": {"id": "a", "name": "x.jpeg", "time": "2025-03-04T10:11:12.345678", "format": "jpeg",
                "tags": ["central_image"], "annotations": {}},
      "instrument": {"settings": {"extensions": {
          "org.openflexure.camera_stage_mapping": {"image_to_stage_displacement": CSM, "backlash_vector": [0, 0, 0]},
          "usafcal": {"um_per_px": 0.11}}},
          "state": {"stage": {"position": {"x": 1000, "y": -2000, "z": 35}}}}}
V3 = {"image": {"time": "2025-03-04T10:11:12.345678", "tags": []},
      "stage": {"position": {"x": 10, "y": 20, "z": 30}},
      "camera_stage_mapping": {"image_to_stage_displacement_matrix": CSM, "image_resolution": [1232, 1640]}}
V3_SLASH = {"image": {"tags": ["central_image"]}, "/stage/": {"position": {"x": 1, "y": 2, "z": 3}},
            "/camera_stage_mapping/": {"image_to_stage_displacement_matrix": CSM, "image_resolution": [616, 820]}}


def write_jpeg(path, comment: bytes | None = None, size=(64, 48), exif_extra=None):
    exif = {"Exif": {}, "0th": {}}
    if comment is not None:
        exif["Exif"][piexif.ExifIFD.UserComment] = comment
    for ifd, tags in (exif_extra or {}).items():
        exif[ifd].update(tags)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        path, exif=piexif.dump(exif) if (comment is not None or exif_extra) else b"")
    return path


@pytest.mark.parametrize("prefix", [b"", b"ASCII\0\0\0", b"\0" * 8])
def test_v2_with_and_without_prefix(tmp_path, prefix):
    p = write_jpeg(tmp_path / "a.jpeg", prefix + json.dumps(V2).encode())
    m = read_metadata(p)
    assert (m.width, m.height) == (64, 48)
    assert m.layout == "v2" and m.is_central and m.problem is None
    assert m.stage == (1000.0, -2000.0, 35.0)
    np.testing.assert_allclose(m.csm, CSM)
    assert m.csm_width == 832 and m.um_per_px == pytest.approx(0.11)
    assert m.time.isoformat() == "2025-03-04T10:11:12.345678"


def test_unicode_prefix(tmp_path):
    p = write_jpeg(tmp_path / "a.jpeg", b"UNICODE\0" + json.dumps(V3).encode("utf-16-be"))
    assert read_metadata(p).stage == (10.0, 20.0, 30.0)


def test_v3_and_slash_layouts(tmp_path):
    m = read_metadata(write_jpeg(tmp_path / "a.jpeg", json.dumps(V3).encode()))
    assert m.layout == "v3" and not m.is_central and m.stage == (10, 20, 30) and m.csm_width == 1640
    m = read_metadata(write_jpeg(tmp_path / "b.jpeg", json.dumps(V3_SLASH).encode()))
    assert m.layout == "v3-slash" and m.is_central and m.stage == (1, 2, 3) and m.csm_width == 820
    assert m.time is None


def test_exif_datetime_used_when_json_has_no_time(tmp_path):
    extra = {"Exif": {piexif.ExifIFD.DateTimeOriginal: b"2024:05:06 07:08:09"}}
    m = read_metadata(write_jpeg(tmp_path / "a.jpeg", json.dumps(V3_SLASH).encode(), exif_extra=extra))
    assert m.time.isoformat() == "2024-05-06T07:08:09"


def test_problems_are_reported_not_raised(tmp_path):
    assert read_metadata(write_jpeg(tmp_path / "a.jpeg")).problem == "no EXIF metadata"
    m = read_metadata(write_jpeg(tmp_path / "b.jpeg", b"{not json"))
    assert m.problem.startswith("EXIF UserComment is not JSON") and m.stage is None
    m = read_metadata(write_jpeg(tmp_path / "c.jpeg", b"[1, 2]"))
    assert "not an object" in m.problem


def test_header_errors_and_truncation(tmp_path):
    good = write_jpeg(tmp_path / "a.jpeg", json.dumps(V2).encode(), size=(300, 200))
    data = good.read_bytes()
    assert read_jpeg_header(good)[3] is True
    (tmp_path / "t.jpeg").write_bytes(data[: len(data) * 2 // 3])
    w, h, exif, complete = read_jpeg_header(tmp_path / "t.jpeg")
    assert (w, h) == (300, 200) and not complete and exif.startswith(b"Exif")
    (tmp_path / "n.jpeg").write_bytes(b"GIF89a" + data)
    with pytest.raises(HeaderError, match="not a JPEG"):
        read_jpeg_header(tmp_path / "n.jpeg")
    (tmp_path / "h.jpeg").write_bytes(data[:30])
    with pytest.raises(HeaderError):
        read_jpeg_header(tmp_path / "h.jpeg")


def test_unknown_keys_are_ignored():
    fields = parse_ofm_json({"something": {"else": 1}, "image": {"tags": "not-a-list"}})
    assert fields["stage"] is None and fields["tags"] == () and fields["csm"] is None


def test_decode_user_comment_strips_padding():
    assert decode_user_comment(b'ASCII\0\0\0{"a": 1}\0\0') == '{"a": 1}'
