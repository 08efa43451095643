"""The exception types users see: a file and what is wrong with it, or an option and its problem."""
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


class OptionError(OfmTilingError, ValueError):
    """An option value that cannot work, found before any work starts.

    The message names the library parameter (``quality must be …``); the command line reports it
    under the flag that set it (`parameter` tells which).
    """

    def __init__(self, parameter: str, problem: str):
        self.parameter = parameter
        super().__init__(None, f"{parameter} {problem}")
        self.problem = problem
