"""The error for inputs label restoration refuses (shapes, values, options); the message says what to change.

A ValueError, so ``except ValueError`` catches it; the command-line scripts of :mod:`inversion` report it in one
line instead of a traceback (``inversion.utils.errors.USER_ERRORS``).
"""

__all__ = ["LabelRestoreInputError"]


class LabelRestoreInputError(ValueError):
    """An input to label restoration is invalid (a shape, a value, an option); the message says which."""
