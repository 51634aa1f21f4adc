"""The method registry and :func:`restore_labels`.

A method is a plain function with the shared signature::

    method(grad_weight, grad_bias, weight, bias, batch_size, **options) -> RestorationResult

that validates its inputs itself (so it can also be called directly). :func:`register_method` adds one
(e.g. wrapped with :func:`label_restore._method.restoration_method`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .aux import aux
from .existence import gi, idlg
from .ilrg import ilrg
from .llg import bias_corrected, llg
from .result import RestorationResult
from .rlg import rlg

__all__ = ["METHOD_NAMES", "available_methods", "get_method", "register_method", "restore_labels"]

Method = Callable[..., RestorationResult]

#: The built-in methods.
METHOD_NAMES = ("ilrg", "aux", "idlg", "gi", "rlg", "llg", "bias_corrected")

_REGISTRY: dict[str, Method] = {
    "ilrg": ilrg,
    "aux": aux,
    "idlg": idlg,
    "gi": gi,
    "rlg": rlg,
    "llg": llg,
    "bias_corrected": bias_corrected,
}


def available_methods() -> tuple[str, ...]:
    """Names of all registered methods (the built-ins first)."""
    return tuple(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered function for ``name``.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown label-restoration method {name!r}; valid methods: {', '.join(_REGISTRY)}.")
    return _REGISTRY[name]


def register_method(name: str, fn: Method, *, overwrite: bool = False) -> None:
    """Register ``fn`` (shared signature, returns a :class:`RestorationResult`) under ``name``.

    Raises:
        ValueError: ``name`` exists (built-ins can never be replaced; others only with ``overwrite=True``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("method name must be a non-empty string.")
    if name in METHOD_NAMES or (name in _REGISTRY and not overwrite):
        raise ValueError(f"method {name!r} is already registered.")
    if not callable(fn):
        raise ValueError("fn must be callable.")
    _REGISTRY[name] = fn


def restore_labels(
    method: str,
    grad_weight: Any = None,
    grad_bias: Any = None,
    weight: Any = None,
    bias: Any = None,
    batch_size: Any = None,
    **options: Any,
) -> RestorationResult:
    """Restore the batch's labels from the final layer's gradients with the named method.

    Args:
        method: one of :data:`METHOD_NAMES` (or a registered name).
        grad_weight: :math:`\\nabla W` of the mean cross-entropy, shape :math:`(C, M)`.
        grad_bias: :math:`\\nabla b`, shape :math:`(C,)` (``None`` if the layer has no bias; iLRG then cannot run).
        weight: :math:`W`, shape :math:`(C, M)` (iLRG only).
        bias: :math:`b`, shape :math:`(C,)` (iLRG only).
        batch_size: :math:`K \\ge 1`.
        **options: method options (see each method's docstring), e.g. ``solver="pinv"`` for iLRG.

    Returns:
        :class:`RestorationResult` (``counts`` sums to ``K``; ``labels`` sorted; ``diagnostics`` lists the
        consistency findings, empty for consistent inputs).

    Raises:
        ValueError: unknown method or option, missing argument the method needs, shape mismatch, ``meta``
            tensors, non-finite values, an all-zero gradient where the method reads the labels,
            ``batch_size`` not an integer >= 1.

    Warns:
        InconsistentGradientWarning: the inputs contradict a mean cross-entropy gradient of ``K`` samples
            (:mod:`label_restore.consistency`); the findings are also in ``diagnostics``.

    Example:
        >>> r = restore_labels("ilrg", grad_weight=gW, grad_bias=gb, weight=W, bias=b, batch_size=8)  # doctest: +SKIP
    """
    fn = get_method(method)
    return fn(grad_weight, grad_bias, weight, bias, batch_size, **options)
