"""The error for inputs the image priors refuse (names, weights, shapes); the message says what to change.

A ValueError, so ``except ValueError`` catches it; the command-line scripts of :mod:`inversion` report it in one
line instead of a traceback (``inversion.utils.errors.USER_ERRORS``).
"""

__all__ = ["PriorsInputError"]


class PriorsInputError(ValueError):
    """An input to an image prior is invalid (a prior name, a weight, a shape); the message says which."""
