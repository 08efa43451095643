"""What a registration backend returns: every link it measured and where every tile goes.

The built-in backend (`ofm_tiling.backend.BuiltinBackend`) and the Fiji backend
(`ofm_tiling.fiji.FijiBackend`) both produce a `Placement`; the report, the layout picture and
fusion read only this.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["Link", "Criteria", "Placement", "apply_model"]


@dataclass
class Link:
    """The measured relation between two overlapping tiles.

    Shifts are ``position[j] - position[i]`` as ``(dx, dy)`` in full-resolution pixels.

    Attributes
    ----------
    i, j : int
        The two tiles (``i < j``).
    predicted : (float, float)
        The shift the stage positions predict.
    shift : (float, float) or None
        The measured shift (None when nothing was measured).
    correlation : float
        How well the overlap matched (Pearson correlation; Fiji's R for the Fiji backend).
    accepted : bool
        Whether registration kept the link.
    reason : str
        Why it was kept or rejected, for people.
    overlap : (int, int)
        Predicted overlap ``(width, height)`` in pixels.
    fine_correlation : float
        Correlation at full resolution on the refinement patches (NaN when not refined).
    threshold : float
        The correlation this link had to reach to be accepted.
    """

    i: int
    j: int
    predicted: tuple[float, float]
    shift: tuple[float, float] | None
    correlation: float
    accepted: bool
    reason: str
    overlap: tuple[int, int]
    fine_correlation: float = float("nan")
    threshold: float = float("nan")


@dataclass
class Criteria:
    """How links were judged, learned from the scan where the backend can learn them.

    Attributes
    ----------
    threshold : float
        Correlation needed by a link of median overlap.
    max_deviation : float
        Largest accepted distance (px) of a measured shift from the corrected stage prediction.
    significance_threshold : float
        Chance level of ``correlation * sqrt(pixels compared)`` (built-in backend).
    search_radius : float
        Half-size (px) of the search window around the stage prediction.
    coarse_scale : int or None
        Reduction factor of the coarse search.
    null_correlations, null_significance : ndarray
        Correlations reached by chance between strips that do not overlap, raw and scaled.
    stage_correction : (2, 2) ndarray
        Systematic stage error ``M``: the corrected prediction of a shift ``d`` is ``d + M @ d``.
    """

    threshold: float = float("nan")
    max_deviation: float = float("nan")
    significance_threshold: float = float("nan")
    search_radius: float = float("nan")
    coarse_scale: int | None = None
    null_correlations: np.ndarray = field(default_factory=lambda: np.zeros(0))
    null_significance: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stage_correction: np.ndarray = field(default_factory=lambda: np.zeros((2, 2)))


@dataclass
class Placement:
    """Where every tile goes, and the evidence.

    Attributes
    ----------
    positions : (N, 2) ndarray
        Top-left corners ``(x, y)`` in pixels, in the frame of the stage positions.
    links : list of Link
        Every pair compared.
    criteria : Criteria
        How the links were judged.
    stage_model : (2, 3) ndarray
        Affine map from stage to final positions: ``p = M[:, :2] @ stage + M[:, 2]``.
    groups : list of list of int
        Tiles joined by kept links, largest first; unlinked tiles are groups of one.
    residuals : dict of (int, int) to float
        ``|p_j - p_i - shift|`` at the final positions, for every accepted link.
    rejected_in_solve : list of (int, int)
        Accepted links the global solve dropped because they disagreed with the others.
    corrections : dict of int to str
        Tiles whose position was corrected after the backend placed them, and why.
    notes : list of str
        What the user should know about this placement.
    backend : str
        Which backend measured the links.
    """

    positions: np.ndarray
    links: list[Link] = field(default_factory=list)
    criteria: Criteria = field(default_factory=Criteria)
    stage_model: np.ndarray = field(default_factory=lambda: np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    groups: list[list[int]] = field(default_factory=list)
    residuals: dict[tuple[int, int], float] = field(default_factory=dict)
    rejected_in_solve: list[tuple[int, int]] = field(default_factory=list)
    corrections: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    backend: str = "builtin"

    @classmethod
    def from_stage(cls, stage_positions: np.ndarray, *, note: str | None = None,
                   backend: str = "builtin") -> Placement:
        """Every tile at its stage position, each a group of its own (nothing registered)."""
        pos = np.asarray(stage_positions, dtype=float).copy()
        return cls(pos, groups=[[k] for k in range(len(pos))], notes=[note] if note else [],
                   backend=backend)

    def shifted(self, offset: np.ndarray) -> Placement:
        """The same placement with every position moved by `offset` ``(dx, dy)``."""
        offset = np.asarray(offset, dtype=float)
        model = np.array(self.stage_model, dtype=float)
        model[:, 2] += offset
        return replace(self, positions=self.positions + offset, stage_model=model)


def apply_model(model: np.ndarray, stage_positions: np.ndarray) -> np.ndarray:
    """Map stage positions through a (2, 3) affine model."""
    stage = np.asarray(stage_positions, float)
    return stage @ np.asarray(model, float)[:, :2].T + np.asarray(model, float)[:, 2]
