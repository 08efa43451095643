"""Finding Fiji (ofm_tiling.fiji.locate): the Fiji.app folder, its launcher and the jars pyimagej needs."""
from __future__ import annotations

import sys

import pytest
from fiji_standin.harness import fake_fiji

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.fiji.locate import find_fiji, missing_pyimagej_jars


def test_find_fiji_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("FIJI_HOME", raising=False)
    with pytest.raises(OfmTilingError, match="no such folder") as err:
        find_fiji(tmp_path / "nowhere" / "Fiji.app")
    assert "\n" not in str(err.value)
    (tmp_path / "NotFiji").mkdir()
    with pytest.raises(OfmTilingError, match="not a Fiji folder"):
        find_fiji(tmp_path / "NotFiji")
    fake = fake_fiji(tmp_path / "Fiji.app")
    (fake / "plugins" / "Stitching_-3.1.9.jar").unlink()
    with pytest.raises(OfmTilingError, match="no Stitching plugin"):
        find_fiji(fake)
    monkeypatch.setenv("FIJI_HOME", str(tmp_path / "NotFiji"))
    with pytest.raises(OfmTilingError, match="FIJI_HOME"):
        find_fiji()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fake Fiji has a Linux launcher")
def test_find_fiji_accepts_the_folder_its_launcher_and_fiji_home(tmp_path, monkeypatch):
    fake = fake_fiji(tmp_path / "Fiji.app")
    assert find_fiji(fake) == fake.resolve()
    assert find_fiji(fake / "ImageJ-linux64") == fake.resolve()
    monkeypatch.setenv("FIJI_HOME", str(fake))
    assert find_fiji() == fake.resolve()
    monkeypatch.delenv("FIJI_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/Fiji.app is one of the usual places
    assert find_fiji() == fake.resolve()


def test_missing_pyimagej_jars(tmp_path):
    fake = fake_fiji(tmp_path / "Fiji.app")
    assert missing_pyimagej_jars(fake) == ["imglib2-imglyb", "imglib2-unsafe"]
    (fake / "jars" / "imglib2-unsafe-1.0.0.jar").touch()
    (fake / "jars" / "imglib2-imglyb-1.1.0.jar").touch()
    assert missing_pyimagej_jars(fake) == []
