"""The one error type users see: a single line naming the problem and what to do."""


class SelfSupError(Exception):
    """A problem with the user's input (path, data, config) — printed as one line, no traceback."""
