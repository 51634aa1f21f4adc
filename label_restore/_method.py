"""Turn a method's core ``(LayerInputs, **options) -> RestorationResult`` into the public plain function.

The public function has the signature of every method that needs the final layer (:data:`label_restore.api.NEEDS`)::

    method(grad_weight, grad_bias, weight, bias, batch_size, **options) -> RestorationResult

It checks the option names, validates the tensors (:func:`label_restore._inputs.validate_inputs`), runs the
core, records its wall time in ``RestorationResult.seconds`` (validation excluded) and, if the core's result
has consistency findings (``RestorationResult.diagnostics``), raises one
:class:`~label_restore.consistency.InconsistentGradientWarning` listing them, attributed to the first caller
outside this package.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from ._inputs import LayerInputs, validate_inputs
from .consistency import InconsistentGradientWarning
from .errors import LabelRestoreInputError
from .result import RestorationResult

__all__ = ["restoration_method"]

Core = Callable[..., RestorationResult]

_PACKAGE = __name__.partition(".")[0]


def _outside_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` made by the caller of this function that names the first frame
    outside this package (the user's call, whether through :func:`restore_labels` or a method directly)."""
    level = 1
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == _PACKAGE:
        level, frame = level + 1, frame.f_back
    return level


def _warn_findings(result: RestorationResult) -> None:
    """One :class:`InconsistentGradientWarning` listing ``result.diagnostics`` (none if it is empty)."""
    if result.diagnostics:
        message = (
            f"{result.method} (K={result.batch_size}): the gradients, the batch size and the restored counts "
            "contradict each other; the counts are unreliable: " + "; ".join(result.diagnostics)
        )
        warnings.warn(message, InconsistentGradientWarning, stacklevel=_outside_stacklevel())


def restoration_method(name: str, requires: Sequence[str]) -> Callable[[Core], Callable[..., RestorationResult]]:
    """Decorator: wrap ``core(inputs: LayerInputs, *, option=default, ...)`` as a public method.

    Args:
        name: the registry name (stored in ``RestorationResult.method``).
        requires: the arguments among ``grad_weight, grad_bias, weight, bias`` that must not be ``None``.
    """
    requires = tuple(requires)

    def decorate(core: Core) -> Callable[..., RestorationResult]:
        params = inspect.signature(core).parameters
        option_names = tuple(p.name for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY)

        @functools.wraps(core)
        def method(
            grad_weight: Any = None,
            grad_bias: Any = None,
            weight: Any = None,
            bias: Any = None,
            batch_size: Any = None,
            **options: Any,
        ) -> RestorationResult:
            unknown = sorted(set(options) - set(option_names))
            if unknown:
                valid = ", ".join(option_names) if option_names else "(none)"
                raise LabelRestoreInputError(
                    f"unknown option(s) {', '.join(unknown)} for method {name!r}; valid options: {valid}."
                )
            inputs: LayerInputs = validate_inputs(name, requires, grad_weight, grad_bias, weight, bias, batch_size)
            start = time.perf_counter()
            result = core(inputs, **options)
            seconds = time.perf_counter() - start
            result = dataclasses.replace(result, method=name, seconds=seconds)
            _warn_findings(result)
            return result

        method.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [
                inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
                for n in ("grad_weight", "grad_bias", "weight", "bias", "batch_size")
            ]
            + [p for p in params.values() if p.kind is inspect.Parameter.KEYWORD_ONLY],
            return_annotation=RestorationResult,
        )
        method.method_name = name  # type: ignore[attr-defined]
        method.requires = requires  # type: ignore[attr-defined]
        method.options = option_names  # type: ignore[attr-defined]
        method.core = core  # type: ignore[attr-defined]
        return method

    return decorate
