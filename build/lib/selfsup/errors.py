"""The one error type users see (a single line naming the problem and what to do), and its warning."""

from __future__ import annotations

import warnings


class SelfSupError(Exception):
    """A problem with the user's input (path, data, config) — printed as one line, no traceback."""


class SelfSupWarning(UserWarning):
    """Something that runs but is probably not what the user meant (the command line prints it as one line)."""


def warn(message: str) -> None:
    """Issue a SelfSupWarning (shown once per call site, as Python's warnings are)."""
    warnings.warn(message, SelfSupWarning, stacklevel=3)
