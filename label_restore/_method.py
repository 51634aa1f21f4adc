"""Turn a method's core ``(LayerInputs, **options) -> RestorationResult`` into the public plain function.

The public function has the signature every registry entry shares::

    method(grad_weight, grad_bias, weight, bias, batch_size, **options) -> RestorationResult

It checks the option names, validates the tensors (:func:`label_restore._inputs.validate_inputs`), runs the
core and records its wall time in ``RestorationResult.seconds`` (validation excluded).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from typing import Any, Callable, Sequence

from ._inputs import LayerInputs, validate_inputs
from .result import RestorationResult

__all__ = ["restoration_method"]

Core = Callable[..., RestorationResult]


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
                raise ValueError(f"unknown option(s) {', '.join(unknown)} for method {name!r}; valid options: {valid}.")
            inputs: LayerInputs = validate_inputs(name, requires, grad_weight, grad_bias, weight, bias, batch_size)
            start = time.perf_counter()
            result = core(inputs, **options)
            seconds = time.perf_counter() - start
            return dataclasses.replace(result, method=name, seconds=seconds)

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
