"""Overlap agreement on real graph-paper tiles: nominal layout, Fiji's positions, ofm-tiling's.

`shared/data/starrynight-graph-paper/` holds 10 real camera tiles of graph paper in one row (about
50 % overlap), their nominal `TileConfiguration.txt`, and Fiji's registered positions. There is no
ground truth, so each placement is judged by its **overlap agreement**: the Pearson correlation
(`ofm_tiling.pixels.ncc`) of the two tiles of every overlapping pair over their whole overlap, at
the integer-rounded positions the fusion uses. The grid lines repeat, so a wrong shift by one
period still agrees fairly well; the numbers and dots drawn on the paper make the difference.

Usage::

    python benchmarks/graph_paper.py [--data FOLDER] [--json benchmarks/graph_paper.json] [--crops DIR]

prints a markdown table (one row per neighbouring pair: agreement for each placement; their median
and minimum; then pairs that only overlap in some placements, e.g. second neighbours where steps
are short) and writes the JSON. ``--crops DIR`` also saves, per pair and placement, the two tiles' overlap side
by side and their difference, to look at. `rows()` returns the table for `benchmarks/run.py`.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ofm_tiling.backend import BuiltinBackend
from ofm_tiling.collect import Collection, Tile
from ofm_tiling.imageio import read_luminance
from ofm_tiling.pixels import ncc
from ofm_tiling.tileconfig import read_tile_configuration

HERE = Path(__file__).resolve().parent
_DATA = Path("shared", "data", "starrynight-graph-paper")
# ../shared beside the repository clone, else the nearest folder above that has it.
DATA = next((p / _DATA for p in HERE.parents if (p / _DATA).is_dir()), HERE.parent.parent / _DATA)
NOMINAL = "TileConfiguration.txt"
FIJI = "fiji-TileConfiguration.registered.txt"


@dataclass
class PairAgreement:
    """Overlap agreement of one overlapping pair under each placement (NaN: no overlap)."""

    i: int
    j: int
    nominal: float
    fiji: float
    ofm_tiling: float


def tile_folder_collection(folder: Path, layout: str = NOMINAL) -> Collection:
    """A `Collection` of a Fiji tile folder without OFM metadata (until `collect` reads such folders)."""
    config = read_tile_configuration(folder / layout)
    first = read_luminance(folder / config.names[0])
    tiles = [Tile(name, folder / name, name, 0, None, None, (float(x), float(y)), "named in " + layout)
             for name, (x, y) in zip(config.names, config.positions)]
    return Collection(folder, folder, tiles, (int(first.shape[0]), int(first.shape[1])), config.positions,
                      None, "file", "tileconfig", [], kind="tileconfig", pixel_type="grey8")


def overlaps(images: list[np.ndarray], positions: np.ndarray) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(i, j, part_i, part_j)`` for every pair that overlaps at the integer-rounded `positions`."""
    corners = np.round(np.asarray(positions, float)).astype(int)
    out = []
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            (hi, wi), (hj, wj) = images[i].shape, images[j].shape
            x0, y0 = np.maximum(corners[i], corners[j])
            x1 = min(corners[i][0] + wi, corners[j][0] + wj)
            y1 = min(corners[i][1] + hi, corners[j][1] + hj)
            if x1 - x0 < 2 or y1 - y0 < 2:
                continue
            part_i = images[i][y0 - corners[i][1]:y1 - corners[i][1], x0 - corners[i][0]:x1 - corners[i][0]]
            part_j = images[j][y0 - corners[j][1]:y1 - corners[j][1], x0 - corners[j][0]:x1 - corners[j][0]]
            out.append((i, j, part_i, part_j))
    return out


def agreement(images: list[np.ndarray], positions: np.ndarray) -> dict[tuple[int, int], float]:
    """Overlap agreement (Pearson correlation over the whole overlap) of every overlapping pair."""
    return {(i, j): ncc(a, b) for i, j, a, b in overlaps(images, positions)}


def placements(folder: Path = DATA, *, workers: int = 2) -> dict[str, np.ndarray]:
    """The three placements compared: nominal, Fiji's and ofm-tiling's (built-in backend)."""
    collection = tile_folder_collection(folder)
    fiji = read_tile_configuration(folder / FIJI)
    order = [fiji.names.index(name) for name in collection.names]
    ours = BuiltinBackend().place(collection, workers=workers, show_progress=False)
    return {"nominal": collection.positions, "fiji": fiji.positions[order], "ofm_tiling": ours.positions}


def rows(folder: Path = DATA, *, workers: int = 2) -> tuple[list[PairAgreement], dict[str, np.ndarray]]:
    """Agreement of every pair that overlaps in some placement, per placement (NaN where that
    placement leaves no overlap); and the placements. Pairs overlapping in the nominal layout come
    first (the neighbours: `summary` is over them), then the others."""
    collection = tile_folder_collection(folder)
    images = [read_luminance(p) for p in collection.paths]
    placed = placements(folder, workers=workers)
    scores = {name: agreement(images, pos) for name, pos in placed.items()}
    others = sorted(set().union(*scores.values()) - set(scores["nominal"]))
    nan = float("nan")
    return [PairAgreement(i, j, *(scores[name].get((i, j), nan) for name in ("nominal", "fiji", "ofm_tiling")))
            for i, j in sorted(scores["nominal"]) + others], placed


def summary(table: list[PairAgreement]) -> dict[str, dict[str, float]]:
    """Median and minimum agreement per placement, over the pairs that overlap in the nominal layout."""
    common = [r for r in table if np.isfinite(r.nominal)]
    out = {}
    for name in ("nominal", "fiji", "ofm_tiling"):
        values = np.array([getattr(r, name) for r in common], float)
        out[name] = {"median": float(np.nanmedian(values)), "min": float(np.nanmin(values))}
    return out


def markdown(table: list[PairAgreement], names: list[str]) -> str:
    """The per-pair table with median and minimum rows."""
    lines = ["| pair | nominal | Fiji | ofm-tiling |", "|---|---|---|---|"]
    common = [r for r in table if np.isfinite(r.nominal)]
    lines += [_line(r, names) for r in common]
    stats = summary(table)
    for key in ("median", "min"):
        lines.append(f"| **{key}** | " + " | ".join(f"{stats[n][key]:.3f}" for n in ("nominal", "fiji", "ofm_tiling"))
                     + " |")
    lines += [_line(r, names, " (not neighbours)") for r in table if not np.isfinite(r.nominal)]
    return "\n".join(lines)


def _line(r: PairAgreement, names: list[str], label: str = "") -> str:
    cells = ["–" if not np.isfinite(v) else f"{v:.3f}" for v in (r.nominal, r.fiji, r.ofm_tiling)]
    return f"| {names[r.i]} – {names[r.j]}{label} | " + " | ".join(cells) + " |"


def save_crops(folder: Path, placed: dict[str, np.ndarray], out: Path) -> None:
    """Per pair and placement: both tiles' overlap side by side, and their absolute difference."""
    from PIL import Image

    collection = tile_folder_collection(folder)
    images = [read_luminance(p) for p in collection.paths]
    out.mkdir(parents=True, exist_ok=True)
    for name, pos in placed.items():
        for i, j, a, b in overlaps(images, pos):
            if j != i + 1:
                continue
            diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).astype(np.uint8)
            Image.fromarray(np.hstack([a, b, diff])).save(out / f"{i + 1:02d}-{j + 1:02d}-{name}.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, default=HERE / "graph_paper.json")
    parser.add_argument("--crops", type=Path, default=None)
    args = parser.parse_args(argv)
    table, placed = rows(args.data)
    names = tile_folder_collection(args.data).names
    print(markdown(table, names))
    result = {"data": str(args.data), "pairs": [asdict(r) for r in table], "summary": summary(table),
              "positions": {k: np.round(v - v[0], 2).tolist() for k, v in placed.items()}}
    args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    if args.crops is not None:
        save_crops(args.data, placed, args.crops)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
