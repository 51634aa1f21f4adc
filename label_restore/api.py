"""The method registry and :func:`restore_labels`.

Every method is registered with what it *needs* (:data:`NEEDS`), which decides how callers run it:

- ``"final_layer"``: the final layer's gradients and parameters, called with the shared signature::

      method(grad_weight, grad_bias, weight, bias, batch_size, **options) -> RestorationResult

  validating its inputs itself (so it can also be called directly; e.g. wrapped with
  :func:`label_restore._method.restoration_method`).
- ``"auxiliary"``: the same, plus the server's labelled auxiliary data as two options, ``aux_probs`` (the model's
  softmax outputs on the auxiliary images, :math:`(N, C)`) and ``aux_labels`` (their classes, :math:`(N,)`);
  :func:`inversion.restore.restore_from_update` computes them from its ``aux=`` (and, for a FedAvg update,
  calls the method again with the softmax rows of simulated clients). Built-in: ``aux``.
- ``"update"``: the whole shared update and the model, for a method that reads more than the final layer::

      method(update, model, *, batch_size, **options) -> RestorationResult

  ``update`` is an :class:`inversion.fl.update.SharedUpdate` and ``model`` the server's ``nn.Module`` (this
  package never imports either); ``batch_size`` is :math:`K`. Only :func:`inversion.restore.restore_from_update`
  runs such a method; :func:`restore_labels` refuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .aux import aux
from .errors import LabelRestoreInputError
from .existence import gi, idlg
from .ilrg import ilrg
from .llg import bias_corrected, llg
from .result import RestorationResult
from .rlg import rlg

__all__ = [
    "METHOD_NAMES",
    "NEEDS",
    "MethodSpec",
    "available_methods",
    "get_method",
    "method_spec",
    "register_method",
    "restore_labels",
    "unregister_method",
]

Method = Callable[..., RestorationResult]

#: What a method can need (see the module docstring).
NEEDS = ("final_layer", "auxiliary", "update")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: its registry name.
        fn: the function (its signature depends on ``needs``).
        needs: one of :data:`NEEDS`: what the caller must hand it.
    """

    name: str
    fn: Method
    needs: str = "final_layer"


_REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("ilrg", ilrg),
        MethodSpec("aux", aux, needs="auxiliary"),
        MethodSpec("idlg", idlg),
        MethodSpec("gi", gi),
        MethodSpec("rlg", rlg),
        MethodSpec("llg", llg),
        MethodSpec("bias_corrected", bias_corrected),
    )
}

#: The built-in methods' names (kept for backwards compatibility; the registered ones are
#: :func:`available_methods`).
METHOD_NAMES = tuple(_REGISTRY)


def available_methods() -> tuple[str, ...]:
    """Names of all registered methods, the built-ins first.

    Example:
        >>> available_methods()[:3]
        ('ilrg', 'aux', 'idlg')
    """
    return tuple(_REGISTRY)


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name``: its function and what it needs.

    Raises:
        ValueError: unknown name (the message lists the valid ones).

    Example:
        >>> method_spec("aux").needs
        'auxiliary'
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise LabelRestoreInputError(
            f"unknown label-restoration method {name!r}; valid methods: {', '.join(_REGISTRY)}."
        )
    return _REGISTRY[name]


def get_method(name: str) -> Method:
    """The registered function for ``name`` (``method_spec(name).fn``).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    return method_spec(name).fn


def register_method(name: str, fn: Method, *, needs: str = "final_layer", overwrite: bool = False) -> None:
    """Register ``fn`` under ``name``; it needs ``needs`` (:data:`NEEDS`), which fixes its signature (see the
    module docstring) and returns a :class:`RestorationResult`.

    Raises:
        ValueError: ``name`` is not a non-empty string or exists (built-ins can never be replaced; others only
            with ``overwrite=True``), ``fn`` is not callable, or ``needs`` is not one of :data:`NEEDS`.

    Example:
        >>> import numpy as np
        >>> from label_restore.result import make_result
        >>> def everyone_class_0(grad_weight, grad_bias, weight, bias, batch_size):
        ...     counts = np.eye(len(grad_bias), dtype=np.int64)[0] * batch_size
        ...     return make_result("class_0", counts, counts, counts > 0, batch_size)
        >>> register_method("class_0", everyone_class_0)
        >>> restore_labels("class_0", grad_bias=np.array([-0.5, 0.5]), batch_size=2).labels.tolist()
        [0, 0]
        >>> register_method("class_0", everyone_class_0)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        LabelRestoreInputError: method 'class_0' is already registered; pass overwrite=True to replace it.
        >>> unregister_method("class_0")
    """
    if not isinstance(name, str) or not name:
        raise LabelRestoreInputError("method name must be a non-empty string.")
    if name in _REGISTRY and (name in METHOD_NAMES or not overwrite):
        fix = "it is built in: choose another name" if name in METHOD_NAMES else "pass overwrite=True to replace it"
        raise LabelRestoreInputError(f"method {name!r} is already registered; {fix}.")
    if not callable(fn):
        raise LabelRestoreInputError(f"fn must be callable; got {type(fn).__name__}.")
    if needs not in NEEDS:
        raise LabelRestoreInputError(f"method {name!r}: needs={needs!r} is not one of {', '.join(NEEDS)}.")
    _REGISTRY[name] = MethodSpec(name, fn, needs)


def unregister_method(name: str) -> None:
    """Remove the registered method ``name`` (e.g. one registered for a test).

    Raises:
        ValueError: ``name`` is built in or not registered.
    """
    if name in METHOD_NAMES:
        raise LabelRestoreInputError(f"method {name!r} is built in and cannot be removed.")
    method_spec(name)
    del _REGISTRY[name]


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
        method: a registered method (:func:`available_methods`) that needs the final layer (``"auxiliary"``
            methods also take ``aux_probs=``, ``aux_labels=``); ``"update"`` methods are refused.
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
        ValueError: unknown method or option, a method that needs the whole update, missing argument the method
            needs, shape mismatch, ``meta`` tensors, non-finite values, an all-zero gradient where the method
            reads the labels, ``batch_size`` not an integer >= 1.

    Warns:
        InconsistentGradientWarning: the inputs contradict a mean cross-entropy gradient of ``K`` samples
            (:mod:`label_restore.consistency`); the findings are also in ``diagnostics``.

    Example:
        Two samples of class 0 and one of class 2, embeddings :math:`e_k = (1, 1)` and an untrained layer
        (:math:`W = 0`, :math:`b = 0`: every softmax is uniform), so :math:`\\nabla b = \\bar p - \\bar y` and
        :math:`\\nabla W = \\nabla b \\, e^\\top`:

        >>> import numpy as np
        >>> grad_bias = np.full(3, 1 / 3) - np.array([2, 0, 1]) / 3
        >>> grad_weight = np.outer(grad_bias, [1.0, 1.0])
        >>> r = restore_labels("ilrg", grad_weight, grad_bias, np.zeros((3, 2)), np.zeros(3), batch_size=3)
        >>> r.counts.tolist(), r.labels.tolist()
        ([2, 0, 1], [0, 0, 2])
    """
    spec = method_spec(method)
    if spec.needs == "update":
        raise LabelRestoreInputError(
            f"label method {method!r} needs the whole update and model, not the final layer: "
            "use inversion.restore.restore_from_update."
        )
    return spec.fn(grad_weight, grad_bias, weight, bias, batch_size, **options)
