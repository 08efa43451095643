"""Focus in a z-stack: sharpness measures, focus curves and their verdicts.

Every x-y position of a smart-stack scan holds several JPEGs taken at different focus. This module

- measures the sharpness of each plane on a reduced-resolution decode (`focus_curve`),
- judges a focus curve: which plane is sharpest, whether the peak is clear, whether the plane the
  microscope tagged is the sharpest (`analyse_curve`),
- surveys the stacks of a whole scan cheaply (`survey_stacks`): JPEG file sizes first, decoding
  only the stacks whose sizes do not settle the verdict.

All-in-focus fusion of a stack lives in `ofm_tiling.allinfocus`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .imageio import read_gray

# --- focus measures ------------------------------------------------------------------------------


def _contrast(value: float, gray: np.ndarray, normalise: bool) -> float:
    # Dividing an energy (grey levels squared) by the squared mean makes it independent of the
    # exposure or lamp brightness, which drift between the planes of a stack.
    if not normalise:
        return float(value)
    mean = float(gray.mean())
    return float(value / mean**2) if mean > 0 else 0.0


def normalised_variance(gray: np.ndarray) -> float:
    """Variance of the intensities divided by their mean (Groen et al. 1985).

    Parameters
    ----------
    gray : (H, W) array
        Luminance image.

    Returns
    -------
    float
        Higher is sharper. Proportional to brightness, and it also counts low-frequency
        structure (vignetting, tissue against glass) that barely changes with focus.
    """
    mean = float(gray.mean())
    return float(gray.var() / mean) if mean > 0 else 0.0


def laplacian_variance(gray: np.ndarray, *, normalise: bool = True) -> float:
    """Variance of the 4-neighbour Laplacian (Pech-Pacheco et al. 2000).

    Parameters
    ----------
    gray : (H, W) array
        Luminance image, at least 3 x 3.
    normalise : bool, optional
        Divide by the squared mean intensity, so a brightness change between planes does not
        change the measure.

    Returns
    -------
    float
        Higher is sharper.
    """
    g = np.asarray(gray, dtype=np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    return _contrast(lap.var(dtype=np.float64), g, normalise)


def tenengrad(gray: np.ndarray, *, normalise: bool = True) -> float:
    """Mean squared Sobel gradient magnitude (Tenenbaum 1970), without a threshold.

    Parameters
    ----------
    gray : (H, W) array
        Luminance image, at least 3 x 3.
    normalise : bool, optional
        Divide by the squared mean intensity (see `laplacian_variance`).

    Returns
    -------
    float
        Higher is sharper.
    """
    g = np.asarray(gray, dtype=np.float32)
    # Separable Sobel on the interior: smooth [1, 2, 1] across, difference [-1, 0, 1] along.
    rows = g[:-2] + 2 * g[1:-1] + g[2:]
    cols = g[:, :-2] + 2 * g[:, 1:-1] + g[:, 2:]
    gx = rows[:, 2:] - rows[:, :-2]
    gy = cols[2:] - cols[:-2]
    energy = np.mean(gx * gx, dtype=np.float64) + np.mean(gy * gy, dtype=np.float64)
    return _contrast(energy, g, normalise)


def brenner(gray: np.ndarray, *, normalise: bool = True) -> float:
    """Mean squared difference between pixels two apart, along rows and columns (Brenner 1976).

    Parameters
    ----------
    gray : (H, W) array
        Luminance image, at least 3 x 3.
    normalise : bool, optional
        Divide by the squared mean intensity (see `laplacian_variance`).

    Returns
    -------
    float
        Higher is sharper.
    """
    g = np.asarray(gray, dtype=np.float32)
    dx = g[:, 2:] - g[:, :-2]
    dy = g[2:] - g[:-2]
    energy = np.mean(dx * dx, dtype=np.float64) + np.mean(dy * dy, dtype=np.float64)
    return _contrast(energy, g, normalise)


#: Focus measures by name, for ``focus_curve(..., measure=name)``.
MEASURES: dict[str, Callable[[np.ndarray], float]] = {
    "normalised_variance": normalised_variance,
    "laplacian": laplacian_variance,
    "tenengrad": tenengrad,
    "brenner": brenner,
}

#: The default measure. On generated stacks (benchmarks/focus_measures.py) every gradient measure
#: found the best plane of ordinary stacks; under faint tissue, heavy noise, fine focus steps and
#: brightness drift together, Tenengrad at 1/8 scale was the most often right (87 %, Laplacian 78 %),
#: its curves the most often unimodal (99 %), and the only one whose curves on blank glass stay
#: clearly flatter than on tissue (prominence <= 0.02 against >= 0.04). Normalised variance fails
#: under brightness drift.
DEFAULT_MEASURE = "tenengrad"


def focus_curve(paths: Sequence[str | os.PathLike], *, scale: int = 8,
                measure: str | Callable[[np.ndarray], float] = DEFAULT_MEASURE) -> np.ndarray:
    """Focus measure of each image of a stack, decoded at 1/`scale` resolution.

    Parameters
    ----------
    paths : sequence of path-like
        The images of one stack, in z order.
    scale : {1, 2, 4, 8}, optional
        Reduction of the decode; JPEGs are reduced in the DCT domain, which is several times
        faster than a full decode.
    measure : str or callable, optional
        A name from `MEASURES` or a function of a 2-D float32 array returning a float.

    Returns
    -------
    (N,) ndarray of float
        Higher is sharper.

    Raises
    ------
    OfmTilingError
        If an image is missing or cannot be decoded.
    """
    if isinstance(measure, str):
        try:
            measure = MEASURES[measure]
        except KeyError:
            raise ValueError(f"unknown focus measure {measure!r}; choose from {sorted(MEASURES)}") from None
    return np.array([measure(read_gray(p, scale)) for p in paths], dtype=float)


# --- focus-curve verdict ---------------------------------------------------------------------------

#: Relative prominence below which a focus curve has no clear peak (see `analyse_curve`). For the
#: default measure at 1/8 scale, generated stacks of blank glass reached at most 0.02 and stacks
#: with tissue at least 0.04 under the hardest conditions (median about 0.5).
CLEAR_PEAK = 0.03


@dataclass(frozen=True)
class FocusVerdict:
    """What a focus curve says about one stack.

    Attributes
    ----------
    best : int
        Index of the sharpest plane.
    prominence : float
        Relative prominence of the peak, 0 (flat curve) to 1.
    clear_peak : bool
        Whether `prominence` reaches the threshold: a stack of blank glass has no clear peak.
    at_end : bool
        The sharpest plane is the first or last one: best focus may lie outside the stack.
    tagged : int or None
        Index of the plane the microscope tagged, if any.
    tagged_is_sharpest : bool or None
        Whether the tagged plane is as sharp as the best one (within the tolerance); None when
        nothing is tagged.
    message : str
        One line for the report, empty when there is nothing to say.
    """

    best: int
    prominence: float
    clear_peak: bool
    at_end: bool
    tagged: int | None
    tagged_is_sharpest: bool | None
    message: str

    @property
    def ok(self) -> bool:
        """True when the report need not mention this stack."""
        return not self.message


def analyse_curve(curve: Sequence[float] | np.ndarray, tagged: int | None = None, *,
                  min_prominence: float = CLEAR_PEAK, tolerance: float = 0.1) -> FocusVerdict:
    """Find the sharpest plane of a focus curve and check the curve and the tag.

    The relative prominence of the highest point is ``(peak - base) / peak``, where ``base`` is the
    higher of the lowest points on either side of the peak (only the one side when the peak is at
    an end). A curve of blank glass is flat up to noise; a curve of tissue rises and falls. With
    fewer than 3 planes there is no curve to judge and only the tag is reported on.

    Parameters
    ----------
    curve : sequence of float
        Focus measure of each plane (higher is sharper, non-negative), in z order.
    tagged : int, optional
        Index of the plane tagged ``central_image``.
    min_prominence : float, optional
        Relative prominence a clear peak needs. The default suits the default measure at 1/8
        scale; other measures spread glass and tissue differently (benchmarks/focus_measures.py).
    tolerance : float, optional
        The tagged plane counts as the sharpest when it falls short of the peak by at most this
        fraction of the curve's range (neighbouring planes either side of a focus that lies
        between them are equally sharp up to noise).

    Returns
    -------
    FocusVerdict
    """
    c = np.asarray(curve, dtype=float)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("a focus curve needs at least one value")
    if tagged is not None and not 0 <= tagged < c.size:
        raise ValueError(f"tagged plane {tagged} outside the stack of {c.size}")
    best = int(np.argmax(c))
    peak = float(c[best])
    sides = [c[:best].min()] if best > 0 else []
    if best < c.size - 1:
        sides.append(c[best + 1:].min())
    base = max(sides) if sides else peak
    prominence = (peak - base) / peak if peak > 0 else 0.0
    clear = prominence >= min_prominence
    at_end = c.size > 1 and best in (0, c.size - 1)
    tag_ok = None
    if tagged is not None:
        tag_ok = bool(peak - c[tagged] <= tolerance * (peak - c.min()))

    problems = []
    if c.size < 3:
        pass  # no curve to judge
    elif not clear:
        problems.append(f"no clear focus peak (prominence {prominence:.2f} < {min_prominence:.2f}: blank or "
                        "out of focus?)")
    elif at_end:
        problems.append(f"sharpest plane is at the end of the stack ({best}): focus may lie outside it")
    if tag_ok is False and clear:
        problems.append(f"tagged plane {tagged} is not the sharpest (plane {best} is; "
                        f"{c[tagged] / peak:.0%} of its sharpness)")
    return FocusVerdict(best, float(prominence), bool(clear), bool(at_end), tagged, tag_ok, "; ".join(problems))


# --- survey of a scan's stacks ---------------------------------------------------------------------

#: A stack's JPEG sizes settle its verdict without decoding when the tagged plane is the largest
#: file, not at an end of the stack, by at least `SIZE_MARGIN` of its size larger than either
#: neighbour, and the size curve's relative prominence reaches `SIZE_PEAK`. A JPEG codes detail:
#: defocus removes it, so in-focus planes are the largest (OFM's own fast autofocus uses this). On
#: generated stacks (benchmarks/focus_measures.py) tissue stacks reach size prominences of
#: 0.1-0.4 and blank glass stays below 0.02; every stack that passed agreed with the full Tenengrad
#: verdict. Stacks that do not pass (blank glass, a mistag, a flat or shifted peak) are decoded.
SIZE_PEAK = 0.08
SIZE_MARGIN = 0.02


@dataclass(frozen=True)
class StackSurvey:
    """The focus survey of one stack.

    Attributes
    ----------
    verdict : FocusVerdict
        What the stack's focus curve says.
    curve : tuple of float
        The curve judged: Tenengrad values, or relative JPEG sizes when `measure` is
        ``"jpeg_size"``.
    measure : str
        ``"tenengrad"`` (planes decoded at 1/8 size) or ``"jpeg_size"`` (the file sizes settled it).
    """

    verdict: FocusVerdict
    curve: tuple[float, ...]
    measure: str


def sizes_settle(sizes: Sequence[float], tagged: int | None, *, min_prominence: float = SIZE_PEAK,
                 margin: float = SIZE_MARGIN) -> bool:
    """Whether a stack's JPEG sizes show the tagged plane as a clear, interior focus peak.

    Parameters
    ----------
    sizes : sequence of float
        Bytes of each plane's file (or of its compressed image data), in z order.
    tagged : int or None
        Index of the tagged plane.
    min_prominence, margin : float, optional
        Relative prominence of the size peak, and how much larger than either neighbour the
        tagged plane must be (fraction of its size).
    """
    s = np.asarray(sizes, dtype=float)
    if tagged is None or s.size < 3 or not 0 < tagged < s.size - 1 or s[tagged] <= 0:
        return False
    neighbours = max(s[tagged - 1], s[tagged + 1])
    peak = analyse_curve(s, tagged)
    return (peak.best == tagged and peak.prominence >= min_prominence
            and s[tagged] - neighbours >= margin * s[tagged])


def survey_stack(paths: Sequence[str | os.PathLike], tagged: int | None,
                 sizes: Sequence[float] | None = None) -> StackSurvey:
    """Focus verdict of one stack, decoding its planes only when the file sizes do not settle it.

    Parameters
    ----------
    paths : sequence of path-like
        The planes of one stack, in z order.
    tagged : int or None
        Index of the plane tagged ``central_image``.
    sizes : sequence of float, optional
        Size of each plane; by default the file sizes.

    Returns
    -------
    StackSurvey
    """
    if sizes is None:
        sizes = [os.path.getsize(p) for p in paths]
    if sizes_settle(sizes, tagged):
        relative = np.asarray(sizes, dtype=float) / max(sizes)
        return StackSurvey(analyse_curve(relative, tagged), tuple(relative.tolist()), "jpeg_size")
    curve = focus_curve(paths)
    return StackSurvey(analyse_curve(curve, tagged), tuple(curve.tolist()), DEFAULT_MEASURE)


def survey_stacks(stacks: Sequence[Sequence[str | os.PathLike]], tagged: Sequence[int | None], *,
                  workers: int | None = None) -> list[StackSurvey]:
    """`survey_stack` of every stack of a scan, in threads (JPEG decoding releases the GIL)."""
    if len(stacks) != len(tagged):
        raise ValueError("stacks and tagged must have the same length")
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        return list(pool.map(survey_stack, stacks, tagged))
