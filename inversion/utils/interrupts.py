"""Ctrl-C that is never lost.

Python raises a SIGINT's KeyboardInterrupt in whatever Python code runs when the signal is
handled. When that code is a weakref callback or a ``__del__`` method (run by the garbage
collector, e.g. as tensors are freed), Python only prints the exception ("Exception ignored
in ...") and carries on: the Ctrl-C is lost, and a sweep would finish, record the run and exit 0.
:func:`watch_sigint` notes every SIGINT as it arrives, so that the sweep engine and the scripts
can still stop with exit code 130 however the KeyboardInterrupt fared.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["watch_sigint"]


@contextmanager
def watch_sigint() -> Iterator[Callable[[], bool]]:
    """Within the block, note every SIGINT, then handle it as before (Python's handler raises KeyboardInterrupt).

    Yields:
        a function telling whether a SIGINT arrived since the block began. It stays False where this
        process does not handle SIGINT in Python (ignored, or the default action) and outside the main
        thread, where no handler can be installed.
    """
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield lambda: False
        return
    arrived = threading.Event()

    def note(signum, frame):
        arrived.set()
        previous(signum, frame)

    signal.signal(signal.SIGINT, note)
    try:
        yield arrived.is_set
    finally:
        signal.signal(signal.SIGINT, previous)
