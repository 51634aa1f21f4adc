"""Errors raised when image data cannot be found, fetched or trusted."""

from __future__ import annotations

from inversion.utils.errors import UserError

__all__ = ["DATA_ROOT_ENV", "DataRootError", "DataUnavailableError", "PackError"]

DATA_ROOT_ENV = "GRADLEAK_DATA"  # the environment variable naming the data root (named in messages)


class DataUnavailableError(UserError, RuntimeError):
    """No source of a dataset could be used; the message says how to provide one."""


class DataRootError(DataUnavailableError, OSError):
    """The data root cannot hold the data cache: it is a file, or it cannot be written.
    Also an OSError, so that code catching file-system errors catches it too."""


class PackError(UserError, RuntimeError):
    """A registry sample pack could not be fetched, verified or converted."""
