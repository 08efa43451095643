"""Pairwise registration of overlapping tiles, starting from stage-predicted positions.

Only pairs whose predicted overlap is meaningful are registered, and only on their predicted
overlap strips widened by a search margin for the stage error (`pairs`). Each pair is matched
coarse to fine (`measure`):

1. At reduced resolution (1/8 for 8 MP tiles, else 1/4; block means of the tile's one full decode,
   cheaper than a second, DCT-scaled decode because entropy decoding dominates either way) the
   band-passed strips are phase-correlated; the strongest peaks inside the search window
   (wrap-around variants included) are each verified with a Pearson correlation on the overlap
   they imply, and the best one wins (`correlate`).
2. The acceptance threshold is learned from the data (`accept`): the same matching run on strips
   that cannot overlap (strip of one pair against the strip of a distant pair with the same
   geometry, or a flipped strip) gives a null distribution of chance correlations. Chance
   correlations shrink like one over the square root of the pixels compared, so the null is kept
   as ``correlation * sqrt(pixels)`` and each link needs the correlation that matches its own
   overlap (small corner overlaps need more); a shift far from the stage prediction is rejected too.
3. Pairs are refined at full resolution on a few textured patches of the overlap, in a small
   window around the coarse result, with a quadratic fit of the correlation surface; only the
   refined shifts of accepted pairs are used.

Nominal positions (a layout with no stage behind it, possibly tens of pixels off, on specimens
that may repeat) are matched by the periodic-pattern rule instead (`nominal`): every local maximum
of the exact coarse correlation is a candidate, and the whole-overlap correlation at full
resolution decides between them.

Each tile is decoded once, at full resolution, and streamed (`stream`): the coarse level is
reduced from it, strips are cut out, and each link is matched and refined as soon as both its
tiles are decoded (acceptance, which needs the whole scan's statistics, is decided afterwards). A
tile is dropped once its last link has run, so memory holds about one row of tiles, whatever the
scan's length.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..placement import Criteria, Link
from .accept import Acceptance, NullDistribution, judge
from .correlate import bandpass
from .measure import MatchSettings, PairMeasurement, measure_pair
from .pairs import ScanPlan, as_positions, candidate_pairs, plan_scan
from .stream import ScanMeasurements, measure_scan
from .tiles import ArrayTiles, JpegTiles, TileImages

if TYPE_CHECKING:
    from ..paircache import PairCache

# Quantile of the null comparisons a link must reach (see `register`'s `null_quantile`).
STAGE_NULL_QUANTILE = 0.99
NOMINAL_NULL_QUANTILE = 0.25
# Null comparisons planned by default (see `register`'s `n_null`).
STAGE_N_NULL = 100
NOMINAL_N_NULL = 32

__all__ = [
    "TileImages", "JpegTiles", "ArrayTiles", "Link", "Registration", "MatchSettings", "PairMeasurement",
    "bandpass", "candidate_pairs", "measure_pair", "register",
]


@dataclass
class Registration:
    """All links of a scan and the data-learned acceptance criteria.

    Attributes
    ----------
    links : list of Link
    threshold : float
        Correlation needed for acceptance by a link of median overlap (each link's own value is
        ``Link.threshold``).
    null_correlations : ndarray
        Correlations reached by chance between strips that do not overlap.
    max_deviation : float
        Largest accepted distance (px) between a measured shift and the stage prediction corrected
        by `stage_correction`.
    coarse_scale : int
        Reduction factor used for the coarse search (1 means no coarse level).
    search_radius : float
        Half-size (px) of the search window around the stage prediction.
    stage_correction : ndarray
        2x2 matrix ``M`` of the systematic stage error learned from confident links: the corrected
        prediction of a shift ``d`` is ``d + M @ d``.
    null_significance : ndarray
        The null comparisons as ``correlation * sqrt(pixels compared)``: chance correlations shrink
        like one over the square root of the overlap, so this scale is common to small (corner) and
        large (side) overlaps.
    significance_threshold : float
        The `null_quantile` of `null_significance`. A link is accepted when its correlation is at
        least ``max(min_correlation, significance_threshold / sqrt(pixels compared))`` and its shift
        is within `max_deviation` of the corrected stage prediction.
    """

    links: list[Link]
    threshold: float
    null_correlations: np.ndarray
    max_deviation: float
    coarse_scale: int = 1
    search_radius: float = 0.0
    stage_correction: np.ndarray = field(default_factory=lambda: np.zeros((2, 2)))
    null_significance: np.ndarray = field(default_factory=lambda: np.zeros(0))
    significance_threshold: float = 0.0

    @property
    def criteria(self) -> Criteria:
        """The acceptance criteria in the backends' common form."""
        return Criteria(self.threshold, self.max_deviation, self.significance_threshold, self.search_radius,
                        self.coarse_scale, self.null_correlations, self.null_significance, self.stage_correction)


def register(
    tiles: TileImages,
    positions: np.ndarray,
    *,
    tile_shape: tuple[int, int],
    min_overlap: float = 0.05,
    max_deviation: float | None = None,
    search_radius: float | None = None,
    coarse_scale: int | None = None,
    filter_sigma: float = 1.0,
    highpass_size: int = 9,
    n_peaks: int = 5,
    min_correlation: float = 0.1,
    null_quantile: float | None = None,
    n_null: int | None = None,
    refine_patch: int = 256,
    refine_patches: int = 2,
    workers: int = 2,
    progress: Any = None,
    pairs: Sequence[tuple[int, int]] | None = None,
    cache: PairCache | None = None,
    nominal: bool = False,
) -> Registration:
    """Measure the shift between every pair of overlapping tiles.

    Parameters
    ----------
    tiles : TileImages
        Grey tiles, in the order of `positions`.
    positions : (N, 2) array_like
        Stage-predicted top-left corners ``(x, y)`` in pixels.
    tile_shape : (int, int)
        ``(height, width)`` of every tile at full resolution.
    min_overlap : float
        Minimum predicted overlap (fraction of tile area) for a pair to be registered.
    max_deviation : float, optional
        Largest accepted distance (px) between a measured shift and the (systematically corrected)
        stage prediction. Default: learned from confident links (3x their 90th percentile), clamped
        between ``max(4 * coarse_scale, 1 % of the tile side)`` and the search window.
    search_radius : float, optional
        How far (px, per axis) a shift may be from the stage prediction. Default: 3/4 of the median
        narrow side of the predicted overlaps (beyond that, little overlap would be left to compare).
    coarse_scale : int, optional
        Reduction for the coarse search (1, 2, 4 or 8); lowered automatically when the overlap
        strips would become narrower than 24 px. 1 registers at full resolution directly.
        Default: 8 for tiles whose shorter side is at least 2048 px (8 MP camera images: the
        coarse level is then ~300 px high, plenty of tissue texture, at a quarter of the cost of
        1/4 scale), else 4.
    filter_sigma, highpass_size : float, int
        Band-pass before correlating: Gaussian sigma (px) and the size (px) of the box whose mean
        is subtracted at the coarse level (twice that at full resolution).
    n_peaks : int
        Phase-correlation peaks verified by Pearson correlation.
    min_correlation : float
        Floor of the learned acceptance threshold (a correlation).
    null_quantile : float, optional
        Quantile of the null comparisons (as ``correlation * sqrt(pixels compared)``) that a link
        must reach; see :class:`Registration`. Default: 0.99 for stage positions; 0.25 for nominal
        ones, where the layout already says which tiles overlap and the null only has to keep out
        featureless or unrelated content (a repeating specimen matches itself anywhere about as
        well as at the true shift, so no pairwise test can prove its overlap).
    n_null : int, optional
        Number of null comparisons between distant strips (several per pair in small scans; flipped
        strips top it up to 32 when the scan is too small for distant strips). Default: 100 for
        stage positions, 32 for nominal ones (a lower quartile needs fewer samples than a 99th
        percentile, and each nominal comparison is a full-resolution match).
    refine_patch, refine_patches : int
        Size (px) and number of the most textured full-resolution patches used for refinement.
    workers : int
        Threads; decoding, filtering and FFTs release the GIL.
    progress : callable or tqdm-like, optional
        ``progress(n_done, n_total)`` or an object with ``update(n)``, advanced per tile decode.
    pairs : sequence of (int, int), optional
        Pairs to register instead of :func:`candidate_pairs`.
    nominal : bool
        The positions are nominal, with no stage error model behind them (a hand-made or grid
        layout, e.g. a Fiji ``TileConfiguration.txt``): every pair and null comparison is matched by
        the periodic-pattern rule (:mod:`ofm_tiling.register.nominal`: all coarse candidates,
        decided by the whole-overlap correlation at full resolution), and `null_quantile` defaults
        to 0.25.
    cache : PairCache, optional
        Pairwise results measured before (:mod:`ofm_tiling.paircache`): those found are not measured
        again (nor their tiles decoded when nothing else needs them), and every result is stored
        in it. Acceptance always runs on the whole scan, so the result is the same with or without.

    Returns
    -------
    Registration
        Every link (accepted or with the reason for rejection) and the learned criteria.
    """
    pos = as_positions(positions)
    if len(tiles) != len(pos):
        raise ValueError(f"{len(tiles)} tiles but {len(pos)} positions")
    if n_null is None:
        n_null = NOMINAL_N_NULL if nominal else STAGE_N_NULL
    if null_quantile is None:
        null_quantile = NOMINAL_NULL_QUANTILE if nominal else STAGE_NULL_QUANTILE
    plan = plan_scan(pos, tile_shape, min_overlap=min_overlap, search_radius=search_radius,
                     coarse_scale=coarse_scale, n_null=n_null, pairs=pairs)
    if not plan.pairs:
        return Registration([], float(min_correlation), np.zeros(0), float(max_deviation or 0.0))
    settings = MatchSettings(plan.tile_shape, plan.scale, filter_sigma, highpass_size, n_peaks,
                             refine_patch, refine_patches, nominal)
    measured = _measure(tiles, plan, settings, cache, workers=workers, progress=progress)
    null = NullDistribution.from_samples(measured.null)
    verdict = judge(measured.pairs, plan.predicted, null, tile_shape=plan.tile_shape, scale=plan.scale,
                    radius=plan.radius, min_correlation=min_correlation, null_quantile=null_quantile,
                    max_deviation=max_deviation)
    return Registration(_links(plan, measured.pairs, verdict), verdict.threshold, null.correlations,
                        verdict.max_deviation, plan.scale, plan.radius, verdict.stage_correction,
                        null.significance, verdict.significance_threshold)


def _measure(tiles: TileImages, plan: ScanPlan, settings: MatchSettings, cache: PairCache | None, *,
             workers: int, progress: Any) -> ScanMeasurements:
    """`measure_scan`, skipping the work units `cache` knows and storing every result in it."""
    if cache is None:
        return measure_scan(tiles, plan, settings, workers=workers, progress=progress)
    keys = cache.keys(tiles, plan, settings)
    measured = measure_scan(tiles, plan, settings, workers=workers, progress=progress, known=cache.lookup(keys))
    cache.store(keys, [*measured.pairs, *measured.null])
    return measured


def _links(plan: ScanPlan, measured: Sequence[PairMeasurement], verdict: Acceptance) -> list[Link]:
    """One `Link` per pair: the refined shift when accepted, else what the coarse search found."""
    links = []
    for p, ((i, j), m, reason) in enumerate(zip(plan.pairs, measured, verdict.reasons)):
        ok = not reason
        shift = m.shift if ok else m.coarse_shift
        links.append(Link(i, j, (float(plan.predicted[p, 0]), float(plan.predicted[p, 1])), shift,
                          float(m.correlation), ok, "accepted" if ok else reason,
                          (int(round(plan.overlap[p, 0])), int(round(plan.overlap[p, 1]))),
                          m.fine_correlation if ok else float("nan"), float(verdict.needed[p])))
    return links
