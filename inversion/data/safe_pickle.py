"""Read data pickles without letting them run code.

A pickle names the callables that rebuild its objects, so unpickling an untrusted file
can run anything. ``ArrayUnpickler`` builds only what plain data files hold: dicts,
lists, tuples, str/bytes, numbers (native pickle opcodes) and numpy arrays and dtypes;
a pickle that names any other callable is refused with ``RefusedPickleError``.
"""

from __future__ import annotations

import pickle
from typing import Any, ClassVar, Literal

import numpy as np

__all__ = ["ArrayUnpickler", "RefusedPickleError"]


class RefusedPickleError(pickle.UnpicklingError):
    """The pickle asks to build an object other than plain data or numpy arrays."""


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol 0-2 pickles of bytes use it, for latin-1 only."""
    if encoding not in ("latin1", "latin-1"):
        raise RefusedPickleError(
            f"refusing to unpickle _codecs.encode with encoding {encoding!r}: "
            "only latin1 (bytes in protocol 0-2 pickles) is allowed"
        )
    return text.encode("latin1")


def _frombuffer(buffer, dtype: np.dtype, shape: tuple[int, ...], order: Literal["C", "F"]) -> np.ndarray:
    """numpy's ``_frombuffer``, with which protocol 5 pickles rebuild arrays."""
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only (module docstring): any other global is refused."""

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__new__,
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__new__,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("_codecs", "encode"): _latin1_bytes,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[module, name]
        except KeyError:
            raise RefusedPickleError(
                f"refusing to unpickle {module}.{name}: only numpy arrays and plain data are allowed"
            ) from None
