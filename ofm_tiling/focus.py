"""Focus measures on reduced-resolution decodes, for picking the sharpest plane of a z-stack."""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .imageio import read_gray


def normalised_variance(gray: np.ndarray) -> float:
    """Variance of the intensities divided by their mean: insensitive to illumination changes."""
    mean = float(gray.mean())
    return float(gray.var() / mean) if mean > 0 else 0.0


def focus_curve(paths: Sequence[str | os.PathLike], *, scale: int = 8) -> np.ndarray:
    """Focus measure of each image, decoded at 1/`scale` resolution (higher is sharper)."""
    return np.array([normalised_variance(read_gray(p, scale)) for p in paths], dtype=float)
