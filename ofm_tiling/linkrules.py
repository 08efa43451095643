"""The rule that judges a measured shift against the stage: a learned systematic stage error and a
bound on the random part. Both backends apply it (built-in registration, and the checks of Fiji's
links), so it has this one home.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DeviationBound", "deviation_bound", "deviations"]


@dataclass
class DeviationBound:
    """How far a measured shift may stray from the stage prediction.

    Attributes
    ----------
    max_deviation : float
        Largest accepted distance (px) from the corrected prediction.
    stage_correction : (2, 2) ndarray
        Systematic stage error ``M``: the corrected prediction of a shift ``d`` is ``d + M @ d``.
    """

    max_deviation: float
    stage_correction: np.ndarray


def deviation_bound(predicted: np.ndarray, measured: np.ndarray, *, low: float, high: float,
                    k: float = 3.0) -> DeviationBound:
    """Learn the systematic stage error and the deviation bound from confident links.

    A stage calibration error shows up as deviations proportional to the shift (``M @ d``); it is
    fitted (with one trimming pass) and removed, then the bound is `k` times the 90th percentile of
    what is left, clamped to ``[low, high]``. With fewer than 8 links the bound is `high`.

    Parameters
    ----------
    predicted, measured : (K, 2) ndarray
        Stage-predicted and measured shifts ``(dx, dy)`` of confident links.
    low, high : float
        Limits of the bound in pixels.
    k : float
        Multiple of the 90th percentile of the random deviations.
    """
    pred = np.asarray(predicted, float).reshape(-1, 2)
    dev = np.asarray(measured, float).reshape(-1, 2) - pred
    m = np.zeros((2, 2))
    if len(pred) < 6:
        return DeviationBound(float(high), m)
    keep = np.ones(len(pred), bool)
    for _ in range(2):
        sol, *_ = np.linalg.lstsq(pred[keep], dev[keep], rcond=None)
        m = sol.T
        resid = np.linalg.norm(dev - pred @ m.T, axis=1)
        keep = resid <= np.quantile(resid, 0.8) + 1e-9
    if len(pred) < 8:
        return DeviationBound(float(high), m)
    return DeviationBound(float(np.clip(k * np.quantile(resid, 0.9), low, high)), m)


def deviations(predicted: np.ndarray, measured: np.ndarray, stage_correction: np.ndarray) -> np.ndarray:
    """Distance (px) of each measured shift from its corrected stage prediction."""
    pred = np.asarray(predicted, float).reshape(-1, 2)
    return np.linalg.norm(np.asarray(measured, float).reshape(-1, 2) - pred - pred @ np.asarray(stage_correction).T,
                          axis=1)
