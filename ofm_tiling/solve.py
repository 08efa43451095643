"""Global placement of tiles from pairwise links and the stage positions.

Accepted links constrain position differences (weighted by their correlation); a weak prior ties
every tile to an affine model of the stage, fitted to the well-linked tiles. So linked tiles are
placed by the image data, while blank tiles and groups of tiles with no link to the rest land where
the corrected stage model puts them: no tile is dropped and no group collapses onto another.
Links that disagree with the rest are removed, worst first, and the system is solved again.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import splu
from scipy.special import fdtri  # the F quantile; scipy.stats would add 0.35 s of imports

from .placement import apply_model

__all__ = ["Solution", "solve", "apply_model"]


@dataclass
class Solution:
    """Solved tile positions and how well the links agree with them.

    Attributes
    ----------
    positions : (N, 2) ndarray
        Top-left corners ``(x, y)`` in pixels, in the stage frame (not shifted to start at 0: the
        caller shifts, e.g. by ``positions.min(axis=0)``, when it builds the canvas).
    residuals : dict of (int, int) to float
        For every link accepted by registration, ``|p_j - p_i - shift|`` in pixels at the solution,
        including links dropped by the solve.
    stage_model : (2, 3) ndarray
        Affine map from stage to solved positions: ``p = M[:, :2] @ stage + M[:, 2]``.
    groups : list of list of int
        Connected components of the links kept, largest first; unlinked tiles are single groups.
    rejected_in_solve : list of (int, int)
        Links dropped because they disagreed with the others, in the order they were dropped.
    """

    positions: np.ndarray
    residuals: dict[tuple[int, int], float]
    stage_model: np.ndarray
    groups: list[list[int]]
    rejected_in_solve: list[tuple[int, int]]


def _link_weight(correlation: float) -> float:
    """Weight of a link: r^2 / (1 - r^2), an information-like measure, bounded to stay sane."""
    r = float(np.clip(correlation if np.isfinite(correlation) else 0.05, 0.05, 0.95))
    return r * r / (1 - r * r)


def _least_squares(n: int, i: np.ndarray, j: np.ndarray, shift: np.ndarray, w: np.ndarray,
                   prior: np.ndarray, lam: float) -> np.ndarray:
    """Minimise sum w |p_j - p_i - shift|^2 + lam sum |p - prior|^2 (normal equations, sparse)."""
    rows = np.concatenate([i, j, i, j, np.arange(n)])
    cols = np.concatenate([i, j, j, i, np.arange(n)])
    vals = np.concatenate([w, w, -w, -w, np.full(n, lam)])
    a = sparse.csc_matrix((vals, (rows, cols)), shape=(n, n))
    b = lam * prior
    ws = w[:, None] * shift
    np.add.at(b, j, ws)
    np.subtract.at(b, i, ws)
    return splu(a).solve(b)


def _fit_model(stage: np.ndarray, solved: np.ndarray, kind: str = "auto",
               significance: float = 0.01) -> np.ndarray:
    """Stage -> solved model: a translation, or an affine map when the data support it.

    The deviation ``solved - stage`` is fitted as an affine function of the stage position with a
    tiny ridge on its linear part, so directions the stage positions do not span (a single row of
    tiles) keep an identity scale. With ``kind="auto"`` the affine part is kept only if an F-test
    says it explains the deviations better than a translation (at `significance`): random stage
    errors would otherwise be read as a spurious scale or rotation, and blank tiles placed by the
    model would end up further from the truth than the stage put them.
    """
    model = np.hstack([np.eye(2), np.zeros((2, 1))])
    if len(stage) == 0:
        return model
    dev = solved - stage
    mean_s, mean_d = stage.mean(axis=0), dev.mean(axis=0)
    model[:, 2] = mean_d
    if kind == "translation" or len(stage) < 3:
        return model
    sc, dc = stage - mean_s, dev - mean_d
    gram = sc.T @ sc
    ridge = 1e-9 * np.trace(gram) + 1e-12
    g = np.linalg.solve(gram + ridge * np.eye(2), sc.T @ dc).T
    if kind == "auto":
        extra = 2 * np.linalg.matrix_rank(sc, tol=1e-6 * (np.abs(sc).max() + 1e-12))
        dof = dc.size - 2 - extra
        rss_t, rss_a = float((dc ** 2).sum()), float(((dc - sc @ g.T) ** 2).sum())
        if extra == 0 or dof <= 0:
            return model
        if rss_a > 0:
            f = ((rss_t - rss_a) / extra) / (rss_a / dof)
            if f < fdtri(extra, dof, 1 - significance):
                return model
    model[:, :2] += g
    model[:, 2] = mean_d - g @ mean_s
    return model


def solve(
    stage_positions: np.ndarray,
    links: Sequence[Any],
    *,
    prior_weight: float = 1e-3,
    max_residual: float | None = None,
    min_residual: float = 2.0,
    model: str = "auto",
    max_iterations: int = 100,
) -> Solution:
    """Place all tiles by global weighted least squares.

    Parameters
    ----------
    stage_positions : (N, 2) array_like
        Stage-predicted top-left corners ``(x, y)`` in pixels.
    links : sequence of Link
        Objects with ``i``, ``j``, ``shift`` (``(dx, dy)`` = p_j - p_i or None), ``correlation`` and
        ``accepted``; only accepted links with a shift are used.
    prior_weight : float
        Weight of the pull of each tile towards the stage model, relative to a link of median
        weight. Small, so it only decides what the links leave free: where unlinked tiles and
        each separate group sit.
    max_residual : float, optional
        Links whose residual exceeds this (px) are dropped, worst first (each round drops the links
        that are the worst among the links sharing a tile with them). Default: the larger of
        `min_residual` and 5 robust standard deviations of the residuals (from their quartile).
    min_residual : float
        Floor (px) of the automatic residual tolerance.
    model : {"auto", "affine", "translation", "none"}
        Stage model fitted to the linked tiles and used as the prior. "affine" corrects the scale,
        rotation and shear of the stage calibration as well as an offset; "auto" uses it only when
        an F-test finds it significant (else a translation); "none" uses the stage positions as
        they are.
    max_iterations : int
        Bound on solve / drop / refit rounds.

    Returns
    -------
    Solution
        Positions in the stage frame (not shifted to start at 0), per-link residuals, the stage
        model, the connected groups and the links dropped here.
    """
    stage = np.asarray(stage_positions, dtype=np.float64)
    if stage.ndim != 2 or stage.shape[1] != 2:
        raise ValueError(f"stage_positions must be (N, 2), got {stage.shape}")
    system = _LinkSystem.from_links(links, len(stage))
    if model not in ("auto", "affine", "translation", "none"):
        raise ValueError(f"model must be auto, affine, translation or none, not {model!r}")
    fit = _iterate(stage, system, prior_weight=prior_weight, max_residual=max_residual,
                   min_residual=min_residual, model=model, max_iterations=max_iterations)
    groups = _groups(len(stage), system.i[fit.active], system.j[fit.active])
    residuals = {(int(a), int(b)): float(r) for a, b, r in zip(system.i, system.j, fit.residual)}
    rejected = [(int(system.i[k]), int(system.j[k])) for k in fit.dropped]
    return Solution(fit.positions, residuals, fit.model, groups, rejected)


@dataclass
class _LinkSystem:
    """The accepted links as arrays: tiles ``i`` and ``j``, ``shift`` (dx, dy) and ``weight``."""

    i: np.ndarray
    j: np.ndarray
    shift: np.ndarray
    weight: np.ndarray

    @classmethod
    def from_links(cls, links: Sequence[Any], n: int) -> _LinkSystem:
        """The accepted links with a shift between two different tiles of ``0..n - 1``."""
        used = [lk for lk in links if lk.accepted and lk.shift is not None and lk.i != lk.j]
        bad = [lk for lk in used if not (0 <= lk.i < n and 0 <= lk.j < n)]
        if bad:
            raise ValueError(f"link ({bad[0].i}, {bad[0].j}) refers to a tile outside 0..{n - 1}")
        return cls(np.array([lk.i for lk in used], dtype=int), np.array([lk.j for lk in used], dtype=int),
                   np.array([lk.shift for lk in used], dtype=np.float64).reshape(-1, 2),
                   np.array([_link_weight(lk.correlation) for lk in used], dtype=np.float64))

    def residuals(self, positions: np.ndarray) -> np.ndarray:
        """``|p_j - p_i - shift|`` of every link at `positions`."""
        return np.linalg.norm(positions[self.j] - positions[self.i] - self.shift, axis=1)


@dataclass
class _Fit:
    """Where the solve / drop / refit rounds ended."""

    positions: np.ndarray
    residual: np.ndarray
    model: np.ndarray
    active: np.ndarray
    dropped: list[int]


def _iterate(stage: np.ndarray, system: _LinkSystem, *, prior_weight: float, max_residual: float | None,
             min_residual: float, model: str, max_iterations: int) -> _Fit:
    """Solve, drop the worst outliers and solve again; once none is left, refit the stage model."""
    n = len(stage)
    fit = _Fit(stage.copy(), np.zeros(len(system.i)), np.hstack([np.eye(2), np.zeros((2, 1))]),
               np.ones(len(system.i), dtype=bool), [])     # the stage model is the identity to start
    for _ in range(max_iterations):
        if n == 0:
            break
        prior = apply_model(fit.model, stage)
        if not fit.active.any():
            fit.positions, fit.residual = prior, system.residuals(prior)
            break
        lam = prior_weight * float(np.median(system.weight[fit.active]))
        a = fit.active
        fit.positions = _least_squares(n, system.i[a], system.j[a], system.shift[a], system.weight[a], prior, lam)
        fit.residual = system.residuals(fit.positions)
        drop = _outliers(system, fit.active, fit.residual, n, max_residual, min_residual)
        if len(drop):
            fit.active[drop] = False
            fit.dropped.extend(int(k) for k in drop)
            continue
        if model == "none":
            break
        linked = np.unique(np.concatenate([system.i[a], system.j[a]]))
        refitted = _fit_model(stage[linked], fit.positions[linked], model)
        change = np.abs(apply_model(refitted, stage) - prior).max()
        fit.model = refitted
        if change < 1e-3:
            break
    return fit


def _outliers(system: _LinkSystem, active: np.ndarray, residual: np.ndarray, n: int,
              max_residual: float | None, min_residual: float) -> np.ndarray:
    """Links to drop this round, worst first (empty when every active link fits).

    A bad link spreads its error around the loops it closes, so its neighbours look bad too (and a
    median-based spread would be inflated): the scale comes from the 25th percentile, and a link is
    dropped only if no link sharing a tile is worse.
    """
    tol = max_residual
    if tol is None:
        sigma = float(np.quantile(residual[active], 0.25)) / 0.7585   # Rayleigh: q25 = 0.7585 sigma
        tol = max(min_residual, 5 * sigma)
    over = active & (residual > tol)
    if not over.any():
        return np.zeros(0, dtype=int)
    ii, jj = system.i, system.j
    worst_at = np.zeros(n)
    np.maximum.at(worst_at, ii[active], residual[active])
    np.maximum.at(worst_at, jj[active], residual[active])
    drop = np.flatnonzero(over & (residual >= np.maximum(worst_at[ii], worst_at[jj])))
    return drop[np.argsort(-residual[drop])]


def _groups(n: int, i: np.ndarray, j: np.ndarray) -> list[list[int]]:
    graph = sparse.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = {}
    for k, lab in enumerate(labels):
        groups.setdefault(int(lab), []).append(k)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0]))
