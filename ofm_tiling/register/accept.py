"""Acceptance: the chance level learned from null comparisons, and the deviation bound.

Chance correlations shrink like one over the square root of the pixels compared, so the null is
kept as ``correlation * sqrt(pixels)`` (one threshold fits side and corner overlaps alike) and
turned back into the correlation each link needs for its own overlap; a shift far from the
(systematically corrected) stage prediction is rejected too.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..linkrules import deviation_bound, deviations
from .measure import PairMeasurement

__all__ = ["NullDistribution", "Acceptance", "judge"]


@dataclass
class NullDistribution:
    """Correlations reached by chance between strips that do not overlap.

    Attributes
    ----------
    correlations : ndarray
        The raw correlations.
    significance : ndarray
        The same as ``correlation * sqrt(pixels compared)``.
    """

    correlations: np.ndarray
    significance: np.ndarray

    @classmethod
    def from_samples(cls, samples: Sequence[tuple[float, int]]) -> NullDistribution:
        """From (correlation, pixels compared) of null comparisons; failed ones (NaN) are left out."""
        null = np.array([v for v in samples if np.isfinite(v[0])], float).reshape(-1, 2)
        return cls(null[:, 0], null[:, 0] * np.sqrt(null[:, 1]))

    def significance_threshold(self, quantile: float) -> float:
        """The `quantile` of the significance (0 without samples)."""
        return float(np.quantile(self.significance, quantile)) if len(self.significance) else 0.0


@dataclass
class Acceptance:
    """The verdict on every pair and the criteria it was judged by.

    Attributes
    ----------
    needed : (P,) ndarray
        Correlation each pair had to reach.
    threshold : float
        Median of `needed` (the correlation a link of median overlap needs).
    significance_threshold : float
        Chance level of ``correlation * sqrt(pixels compared)``.
    max_deviation : float
        Largest accepted distance (px) from the corrected stage prediction.
    stage_correction : (2, 2) ndarray
        Systematic stage error learned from the confident pairs.
    reasons : list of str
        Why each pair is rejected; empty for accepted pairs.
    """

    needed: np.ndarray
    threshold: float
    significance_threshold: float
    max_deviation: float
    stage_correction: np.ndarray
    reasons: list[str]


def judge(measured: Sequence[PairMeasurement], predicted: np.ndarray, null: NullDistribution, *,
          tile_shape: tuple[int, int], scale: int, radius: float, min_correlation: float,
          null_quantile: float, max_deviation: float | None) -> Acceptance:
    """Accept the pairs whose correlation chance cannot explain and whose shift agrees with the stage.

    The deviation bound, unless given, is learned from the pairs that pass the correlation test,
    clamped between ``max(4 * scale, 1 % of the tile side)`` and the search window's diagonal.
    """
    corr = np.array([m.correlation for m in measured], float)
    compared = np.array([m.compared for m in measured], float)
    shift = np.array([m.coarse_shift if m.coarse_shift is not None else (np.nan, np.nan)
                      for m in measured], float).reshape(-1, 2)
    sig_threshold = null.significance_threshold(null_quantile)
    needed = np.maximum(min_correlation, sig_threshold / np.sqrt(np.maximum(compared, 1)))
    confident = np.isfinite(corr) & (corr >= needed)
    bound = deviation_bound(predicted[confident], shift[confident],
                            low=max(4.0 * scale, 0.01 * max(tile_shape)), high=radius * math.sqrt(2))
    max_dev = bound.max_deviation if max_deviation is None else float(max_deviation)
    deviation = deviations(predicted, shift, bound.stage_correction)
    reasons = [_reason(m, float(nd), float(dv), max_dev) for m, nd, dv in zip(measured, needed, deviation)]
    return Acceptance(needed, float(np.median(needed)), sig_threshold, float(max_dev), bound.stage_correction,
                      reasons)


def _reason(m: PairMeasurement, needed: float, deviation: float, max_deviation: float) -> str:
    """Why a pair is rejected, or "" when it is accepted."""
    if not np.isfinite(m.correlation) or not np.isfinite(deviation):
        return "no overlap left to compare"
    if m.correlation < needed:
        return (f"correlation {m.correlation:.3f} below the {needed:.3f} needed for chance "
                f"not to explain it ({int(m.compared)} px compared)")
    if deviation > max_deviation:
        return f"{deviation:.1f} px from the stage prediction (limit {max_deviation:.1f} px)"
    return m.problem
