"""Which plane of each stack to use: the tagged one, else the sharpest readable one, and why.

Damaged planes are left out with a note; a damaged or missing tag falls back to the sharpest
readable plane by a focus measure, with a note saying which file was the problem and which plane
was used instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .errors import OfmTilingError
from .focus import focus_curve
from .metadata import ImageMetadata
from .scan import Position

# Metadata problems that mean "there is none" rather than "it is damaged" (see metadata.read_metadata).
_NO_METADATA = ("no EXIF metadata", "no EXIF UserComment")


@dataclass
class Selection:
    """The image chosen for one position and why.

    Attributes
    ----------
    position : Position
    image : ImageMetadata
        The chosen plane.
    plane : int
        Its index in `stack`.
    reason : str
        Why it was chosen (for ``tiles.csv`` and the report).
    focus : list of float or None
        The focus curve over `stack`, when one was measured.
    fallback : bool
        The tag could not be used.
    stack : tuple of ImageMetadata
        The readable planes of the position, in focus order.
    notes : list of str
        What the user should know about this position (damaged or unreadable files).
    damaged : list of (Path, str)
        Every damaged plane and its problem (errors with ``strict=True``).
    """

    position: Position
    image: ImageMetadata
    plane: int
    reason: str
    focus: list[float] | None = None
    fallback: bool = False
    stack: tuple[ImageMetadata, ...] = ()
    notes: list[str] = field(default_factory=list)
    damaged: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def stage(self) -> tuple[float, float, float] | None:
        """Stage position of the chosen plane, else of any plane (a stack shares x and y)."""
        return next((im.stage for im in (self.image, *self.position.images) if im.stage is not None), None)

    @property
    def time(self) -> datetime | None:
        """Capture time of the chosen plane, else the earliest of its stack."""
        if self.image.time is not None:
            return self.image.time
        return min((im.time for im in self.position.images if im.time is not None), default=None)

    @property
    def tagged_plane(self) -> int | None:
        tagged = [k for k, im in enumerate(self.stack) if im.is_central]
        return tagged[0] if len(tagged) == 1 else None


# --- selection -------------------------------------------------------------------------------

def select_image(position: Position, *, mode: str = "tag") -> Selection:
    """Choose the image to use for one position.

    ``mode="tag"`` takes the single image tagged ``central_image``; when none or several are
    tagged, the metadata is unreadable, or the tagged image is damaged, it falls back to the
    sharpest readable plane by a focus measure on a reduced-resolution decode. ``mode="sharpest"``
    always uses the focus measure. Damaged planes are left out, each with a note. A flat scan's
    position holding a single untagged image uses it (nothing to choose from, no note).
    """
    lone = position.images[0] if len(position.images) == 1 else None
    if position.label is not None and lone is not None and lone.complete and not position.damaged:
        return Selection(position, lone, 0, "the only image at this x-y position", stack=(lone,))
    damaged = list(position.damaged)
    stack = [im for im in position.images if im.complete]
    damaged += [(im.path, "JPEG is truncated (no end-of-image marker)") for im in position.images if not im.complete]
    if not stack:
        raise OfmTilingError(position.where, "no readable JPEG image in this position")
    tagged = [im for im in position.images if im.is_central]
    if mode == "tag" and len(tagged) == 1 and tagged[0].complete:
        s = Selection(position, tagged[0], stack.index(tagged[0]), "tagged central_image", stack=tuple(stack))
        note = _metadata_note(position, s.image, s.plane, "the tagged central_image")
        s.notes += [note] if note else []
    else:
        s = _sharpest(position, stack, damaged, tagged, mode)
    s.damaged = damaged + s.damaged
    s.notes += _damage_notes(s, mode)
    return s


def _sharpest(position: Position, stack: list[ImageMetadata], damaged: list[tuple[Path, str]],
              tagged: list[ImageMetadata], mode: str) -> Selection:
    """The sharpest decodable plane of `stack`; planes that fail to decode are left out."""
    curve, readable, undecodable = [], [], []
    for im in stack:
        try:
            curve.append(float(focus_curve([im.path])[0]))
            readable.append(im)
        except OfmTilingError as exc:
            undecodable.append((im.path, exc.problem))
    if not readable:
        path, problem = (damaged + undecodable)[0]
        raise OfmTilingError(path, f"{problem}; no readable image in {position.name}")
    best = int(np.argmax(curve))
    chosen = readable[best]
    if mode == "sharpest":
        reason = "sharpest by focus measure (select='sharpest')"
        if len(tagged) == 1 and tagged[0] is not chosen:
            reason += f"; tagged central_image is {tagged[0].path.name}"
        return Selection(position, chosen, best, reason, curve, stack=tuple(readable), damaged=undecodable)
    reason = f"{_why_no_tag(position, tagged, damaged + undecodable)}: sharpest by focus measure"
    note = _metadata_note(position, chosen, best, "the sharpest by focus measure")
    return Selection(position, chosen, best, reason, curve, fallback=True, stack=tuple(readable),
                     notes=[note or f"{position.name}: {reason} ({chosen.path.name})"], damaged=undecodable)


def _metadata_note(position: Position, chosen: ImageMetadata, plane: int, how: str) -> str | None:
    """A note naming the planes whose metadata is damaged (not merely absent) and the plane used."""
    unreadable = [im for im in position.images if im.problem and im.problem not in _NO_METADATA]
    if not unreadable or len(unreadable) == len(position.images):
        return None
    return (f"{position.name}: metadata of {', '.join(im.path.name for im in unreadable)} is unreadable "
            f"({unreadable[0].problem}); used plane {plane} ({chosen.path.name}), {how}")


def _why_no_tag(position: Position, tagged: list[ImageMetadata], damaged: list[tuple[Path, str]]) -> str:
    if len(tagged) > 1:
        return f"{len(tagged)} images tagged central_image"
    if len(tagged) == 1:
        return f"tagged central_image {tagged[0].path.name} is damaged"
    problems = [im for im in position.images if im.problem]
    if problems and len(problems) == len(position.images):
        return f"metadata unreadable ({problems[0].problem})"
    damaged_meta = [im.path.name for im in problems if im.problem not in _NO_METADATA]
    if damaged_meta:
        return f"metadata of {', '.join(damaged_meta)} unreadable"
    if damaged:
        return f"no intact image tagged central_image ({damaged[0][0].name} is damaged and may be the tagged one)"
    return "no image tagged central_image"


def _damage_notes(s: Selection, mode: str) -> list[str]:
    why = "left out of the focus comparison" if mode == "sharpest" or s.fallback else "skipped (not the chosen plane)"
    return [f"{path}: {problem}; {why}" for path, problem in s.damaged]
