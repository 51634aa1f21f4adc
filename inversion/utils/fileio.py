"""File helpers: content hashing, atomic writes, and loading torch files without running code."""

from __future__ import annotations

import errno
import hashlib
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

import torch

from inversion.utils.errors import InputError, MissingFileError, UserError

__all__ = ["DiskFullError", "atomic_write", "disk_full_named", "load_tensor_file", "sha256_file"]

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""The errno values of a write that failed for want of space: the disk, or the user's quota, is full."""


class DiskFullError(UserError, OSError):
    """A file could not be written because the disk (or the user's quota) is full; the file it was to replace
    is intact. Built like an OSError: ``DiskFullError(errno, strerror, filename)``."""

    def __str__(self) -> str:
        return (
            f"cannot write {self.filename}: {self.strerror} (the disk or your quota is full); free some space "
            "and run again (the files written before are intact)"
        )


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 digest of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write ``path`` all-or-nothing: yields a binary file opened on a temporary file in
    the same folder, which is flushed, fsynced and ``os.replace``-d onto ``path`` when
    the block ends without error (and removed when it raises). Creates the folder.

    Raises:
        DiskFullError: the disk or the quota is full (``ENOSPC``, ``EDQUOT``), wherever in the block or
            the writing it happened; ``path`` is then as it was before.
    """
    target = Path(path)
    with disk_full_named(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            os.chmod(temporary, 0o644)  # mkstemp makes it private; a cache file is not
            with os.fdopen(handle, "wb") as file:
                yield file
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


@contextmanager
def disk_full_named(path: str | os.PathLike) -> Iterator[None]:
    """Within the block, an OSError of a full disk or quota (``ENOSPC``, ``EDQUOT``) becomes a
    :class:`DiskFullError` naming ``path``; other errors pass unchanged."""
    try:
        yield
    except OSError as err:
        if err.errno in DISK_FULL and not isinstance(err, DiskFullError):
            raise DiskFullError(err.errno, err.strerror, os.fspath(path)) from None
        raise


def _refusal(path: str | os.PathLike[str], err: Exception) -> ValueError:
    """The error for a file ``torch.load(weights_only=True)`` refuses: it holds more than tensors and plain data."""
    named = re.search(r"GLOBAL (\S+)", str(err))
    found = f" ({named.group(1)})" if named else ""
    return ValueError(
        f"{os.fspath(path)} holds something other than tensors and plain data{found}: refused for security, since "
        "unpickling arbitrary objects can run code; save plain tensors (e.g. torch.save(model.state_dict(), path))"
    )


def load_tensor_file(path: str | os.PathLike[str], what: str) -> Any:
    """The content of a torch file of tensors and plain data, onto the CPU, without running any code.

    Reads with ``torch.load(path, map_location="cpu", weights_only=True)``: pickled objects are
    refused, and files saved from CUDA tensors load on machines without a GPU.

    Args:
        path: the file.
        what: what the file should be (e.g. ``"weights"``), for the error messages.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds other objects (refused), may not be read (permissions), or is not
            a readable torch file (truncated or corrupt).
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"no {what} file at {os.fspath(path)}")
    try:
        with warnings.catch_warnings():  # torch warns about legacy pickle protocols before refusing them
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from None
    except PermissionError as err:
        raise InputError(f"cannot read {os.fspath(path)}: {err.strerror}; check its permissions") from None
    except Exception as err:  # a cut zip archive (RuntimeError, OSError), an empty file (EOFError), ...
        cause = str(err).split(". ")[0].splitlines()[0] if str(err) else ""
        raise InputError(
            f"{os.fspath(path)} is not a readable torch file (truncated or corrupt?): {type(err).__name__}"
            f"{': ' + cause if cause else ''}; copy or write it again"
        ) from None
