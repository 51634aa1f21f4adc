"""A run's output folder (``out``): checked, locked while a run writes into it, cleared of an earlier run.

Every script that writes a run directory goes through :func:`run_folder`:

* ``out`` must be a folder it can create and write to; otherwise one :class:`OutputFolderError`
  line says what is wrong (an existing file, no permission) before any work is done;
* a lock (``out/.lock``, an ``flock`` the kernel drops when the process dies, even by ``kill -9``;
  the file is removed when the run ends) makes a second run into the same ``out`` fail at once
  instead of interleaving its files;
* a fresh run moves the files an earlier run left in ``out`` (only the names the script writes)
  into ``out/previous/<time>/``, so a new ``config.yaml`` never sits beside an older
  ``results.json``, and nothing is deleted. A resumed run keeps them.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from inversion.utils.errors import InputError

__all__ = ["LOCK_NAME", "PREVIOUS_NAME", "OutputFolderError", "check_out", "run_folder"]

log = logging.getLogger("inversion.utils.rundir")

LOCK_NAME = ".lock"
PREVIOUS_NAME = "previous"


class OutputFolderError(InputError):
    """``out`` cannot hold this run: a file, not writable, or in use by another run."""


def check_out(out: str | os.PathLike) -> Path:
    """``out`` as a Path, if it is (or can be created as) a writable folder; creates nothing.

    Raises:
        OutputFolderError: ``out`` is a file, lies under a file, or cannot be written or created.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"out={out} is a file, not a folder: choose another out")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise OutputFolderError(f"cannot create out={out}: {existing} is a file; choose another out")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == out else f"cannot be created ({existing} is not writable)"
        raise OutputFolderError(f"out={out} {what}: choose a folder you can write to")
    return out


def _create(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputFolderError(f"cannot create out={out} ({err.strerror}): choose a folder you can write to") from None


@contextmanager
def _lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` (flock) for the block; the file is removed when the block ends."""
    path = out / LOCK_NAME
    while True:
        handle = open(path, "a+")  # noqa: SIM115  (held open while locked; closed on every path)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise OutputFolderError(
                f"another run (pid {holder}) is writing into out={out}: wait for it to finish or choose another out"
            ) from None
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break  # locked the file that is in place (not one a finishing run has just removed)
        handle.close()
    with handle:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still locked: a waiting run then locks a new file


def _move_aside(out: Path, outputs: Sequence[str]) -> Path | None:
    """Move the earlier run's ``outputs`` present in ``out`` to ``out/previous/<time>/``; its path, or None."""
    present = [name for name in outputs if (out / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = out / PREVIOUS_NAME / stamp
    suffix = 1
    while target.exists():
        target, suffix = out / PREVIOUS_NAME / f"{stamp}-{suffix}", suffix + 1
    target.mkdir(parents=True)
    for name in present:
        os.replace(out / name, target / name)
    log.info("moved the earlier run's %s from %s to %s", ", ".join(present), out, target)
    return target


@contextmanager
def run_folder(out: str | os.PathLike, outputs: Sequence[str], *, keep: bool = False) -> Iterator[Path]:
    """Hold ``out`` for one run: check it, lock it and (unless ``keep``) move an earlier run's outputs aside.

    Args:
        out: the run directory (created if missing).
        outputs: the names (files or folders) this run writes into ``out``.
        keep: leave the earlier outputs in place (a resumed run continues them).

    Yields:
        ``out`` as a Path, locked until the block ends.

    Raises:
        OutputFolderError: ``out`` is a file, not writable, or locked by another run.
    """
    out = check_out(out)
    _create(out)
    with _lock(out):
        if not keep:
            _move_aside(out, outputs)
        yield out
