import numpy as np
import pytest

from ofm_tiling.errors import OfmTilingError
from ofm_tiling.tileconfig import (
    format_tile_configuration,
    parse_tile_configuration,
    read_tile_configuration,
    write_tile_configuration,
)


def test_round_trip(tmp_path):
    pos = np.array([[0, 0], [2296.25, -3.5], [1e-4, 1234.0]])
    write_tile_configuration(tmp_path / "T.txt", ["00.jpeg", "01.jpeg", "02.jpeg"], pos)
    names, back = read_tile_configuration(tmp_path / "T.txt")
    assert names == ["00.jpeg", "01.jpeg", "02.jpeg"]
    np.testing.assert_allclose(back, pos, atol=1e-3)
    assert not list(tmp_path.glob("*.tmp"))


def test_reads_what_fiji_writes():
    text = ("# Define the number of dimensions we are working on\ndim = 2\n\n# Define the image coordinates\n"
            "00.jpeg; ; (0.0, 0.0)\n01.jpeg; ; (2296.123456789, -1.0E-4)\n02.jpeg; ; (-1.5E3, 7.0, 0.0)\n")
    names, pos = parse_tile_configuration(text)
    assert names == ["00.jpeg", "01.jpeg", "02.jpeg"]
    np.testing.assert_allclose(pos, [[0, 0], [2296.123456789, -1e-4], [-1500, 7]])


def test_bad_lines_name_the_file():
    with pytest.raises(OfmTilingError, match=r"T.txt: line 3 has a position that is not a number"):
        parse_tile_configuration("dim = 2\n\na.jpeg; ; (1.5x, 2)\n", source="T.txt")


def test_refuses_names_fiji_cannot_read():
    with pytest.raises(ValueError):
        format_tile_configuration(["a;b.jpeg"], np.zeros((1, 2)))
