"""Errors raised when image data cannot be found, fetched or trusted."""
from __future__ import annotations

__all__ = ["DataUnavailableError", "PackError"]


class DataUnavailableError(RuntimeError):
    """No source of a dataset could be used; the message says how to provide one."""


class PackError(RuntimeError):
    """A registry sample pack could not be fetched, verified or converted."""
