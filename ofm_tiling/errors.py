"""The one exception type users see: a file and what is wrong with it."""
from __future__ import annotations

import os


class OfmTilingError(Exception):
    """A problem with the user's input or environment, reported as one line.

    Parameters
    ----------
    path : str or os.PathLike or None
        The file or folder the problem is about.
    problem : str
        What is wrong, phrased for a microscopist (no Python jargon).
    """

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)
