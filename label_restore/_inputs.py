"""Conversion and validation of the final-layer tensors every restoration method receives.

All methods take the final linear layer :math:`z = W e + b` of a classifier with :math:`C` classes and
embedding size :math:`M`, and the gradients of the *mean* cross-entropy over a batch of :math:`K` samples:

- ``grad_weight`` :math:`\\nabla W`, shape :math:`(C, M)`
- ``grad_bias`` :math:`\\nabla b`, shape :math:`(C,)`
- ``weight`` :math:`W`, shape :math:`(C, M)`
- ``bias`` :math:`b`, shape :math:`(C,)`

as torch tensors (any device holding values, e.g. cpu or cuda; moved to CPU, detached; ``meta`` tensors are
refused) or numpy arrays / nested sequences. Integer inputs become float64, half precision becomes float32;
float32 and float64 are kept as they are.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from .errors import LabelRestoreInputError

__all__ = ["ARGUMENT_NAMES", "LayerInputs", "check_batch_size", "validate_inputs"]

ARGUMENT_NAMES = ("grad_weight", "grad_bias", "weight", "bias")

_WHAT = {
    "grad_weight": "the weight gradient dL/dW of the final linear layer, shape (C, M)",
    "grad_bias": "the bias gradient dL/db of the final linear layer, shape (C,)",
    "weight": "the final layer's weight W, shape (C, M)",
    "bias": "the final layer's bias b, shape (C,)",
}


@dataclass(frozen=True)
class LayerInputs:
    """Validated inputs of one restoration call (CPU torch tensors; ``None`` where not given).

    Attributes:
        grad_weight: :math:`(C, M)` or ``None``.
        grad_bias: :math:`(C,)` or ``None``.
        weight: :math:`(C, M)` or ``None``.
        bias: :math:`(C,)` or ``None``.
        batch_size: :math:`K \\ge 1`.
        num_classes: :math:`C`.
    """

    grad_weight: torch.Tensor | None
    grad_bias: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    batch_size: int
    num_classes: int

    def required(self, name: Literal["grad_weight", "grad_bias", "weight", "bias"]) -> torch.Tensor:
        """The tensor ``name``, which a method reads only when it requires it (``restoration_method(requires=...)``),
        so that :func:`validate_inputs` has checked it is given; ValueError if it is None."""
        tensor = getattr(self, name)
        if tensor is None:
            raise LabelRestoreInputError(f"{name} was not given ({_WHAT[name]}); pass it.")
        return tensor


def check_batch_size(batch_size: Any) -> int:
    """Return ``batch_size`` as a Python int, or raise ``ValueError`` unless it is an integer >= 1."""
    value = batch_size
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise LabelRestoreInputError(
            f"batch_size must be an integer K >= 1 (the number of samples in the client's batch); "
            f"got {batch_size!r} of type {type(batch_size).__name__}. Pass e.g. batch_size=int(K)."
        )
    value = int(value)
    if value < 1:
        raise LabelRestoreInputError(
            f"batch_size must be an integer K >= 1 (the number of samples in the client's batch); got {value}."
        )
    return value


def _as_tensor(name: str, value: Any) -> torch.Tensor | None:
    """Convert one argument to a detached CPU float32/float64 tensor (``None`` stays ``None``)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            raise LabelRestoreInputError(
                f"{name} is a meta tensor (a shape without values); label restoration needs real values: pass "
                f"{_WHAT[name]} as a tensor on cpu or cuda, or a numpy array."
            )
        t = value.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.device.type != "cpu":
            t = t.cpu()
    else:
        arr = np.asarray(value)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise LabelRestoreInputError(
                f"{name} must be a numeric torch tensor or numpy array ({_WHAT[name]}); "
                f"got {type(value).__name__} with dtype {arr.dtype}."
            )
        if not arr.flags.writeable:
            arr = arr.copy()
        t = torch.from_numpy(arr)
    if t.dtype == torch.bool or t.is_complex():
        raise LabelRestoreInputError(f"{name} must hold real numbers ({_WHAT[name]}); got dtype {t.dtype}.")
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    elif not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def _all_finite(t: torch.Tensor) -> bool:
    """Fast test: NaN and inf propagate through a sum, so a finite sum means all entries are finite.

    (A non-finite sum may also be an overflow of finite values; the caller then counts exactly.)
    """
    return bool(torch.isfinite(t.sum()))


def _shape_text(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def validate_inputs(
    method: str,
    requires: Sequence[str],
    grad_weight: Any = None,
    grad_bias: Any = None,
    weight: Any = None,
    bias: Any = None,
    batch_size: Any = None,
) -> LayerInputs:
    """Convert and check the arguments of a restoration call.

    Args:
        method: the method's name (for error messages).
        requires: which of ``grad_weight, grad_bias, weight, bias`` the method needs (must not be ``None``).
        grad_weight, grad_bias, weight, bias: see the module docstring; ``None`` where not given.
        batch_size: the batch size :math:`K`.

    Returns:
        The validated :class:`LayerInputs`.

    Raises:
        ValueError: a needed argument is ``None``; an argument is a ``meta`` tensor, has the wrong number of
            dimensions, or its shape disagrees with the others (the message says which); an argument holds NaN or
            inf; the gradient the method reads the labels from is all zero; ``batch_size`` is not an integer >= 1.
    """
    k = check_batch_size(batch_size)
    raw = {"grad_weight": grad_weight, "grad_bias": grad_bias, "weight": weight, "bias": bias}
    for name in requires:
        if raw[name] is None:
            raise LabelRestoreInputError(_missing_message(method, name))
    tensors = {name: _as_tensor(name, value) for name, value in raw.items()}

    for name in ("grad_weight", "weight"):
        t = tensors[name]
        if t is not None and (t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1):
            raise LabelRestoreInputError(
                f"{name} must be a 2-D array of shape (C, M) with C, M >= 1 ({_WHAT[name]}); "
                f"got shape {_shape_text(t)}."
            )
    for name in ("grad_bias", "bias"):
        t = tensors[name]
        if t is not None and (t.ndim != 1 or t.shape[0] < 1):
            raise LabelRestoreInputError(
                f"{name} must be a 1-D array of shape (C,) with C >= 1 ({_WHAT[name]}); got shape {_shape_text(t)}."
            )

    # The first given argument fixes C (and M); every other one must agree with it.
    given = {name: t for name, t in tensors.items() if t is not None}
    ref_name = next((n for n in ARGUMENT_NAMES if n in given), None)
    if ref_name is None:
        raise LabelRestoreInputError(f"{method}: no gradients given; pass at least grad_weight or grad_bias.")
    ref = given[ref_name]
    num_classes = int(ref.shape[0])
    for name in ARGUMENT_NAMES:
        t = tensors[name]
        if t is None or name == ref_name:
            continue
        if int(t.shape[0]) != num_classes:
            raise LabelRestoreInputError(
                f"shape mismatch: {name} has shape {_shape_text(t)} but {ref_name} has shape "
                f"{_shape_text(ref)}; both must describe the same final layer with C={num_classes} classes "
                f"({name} is {_WHAT[name]})."
            )
    gw, w = tensors["grad_weight"], tensors["weight"]
    if gw is not None and w is not None and gw.shape != w.shape:
        raise LabelRestoreInputError(
            f"shape mismatch: weight has shape {_shape_text(w)} but grad_weight has shape {_shape_text(gw)}; "
            "the weight and its gradient must have the same shape (C, M)."
        )

    for name in ARGUMENT_NAMES:
        t = tensors[name]
        if t is None or _all_finite(t):
            continue
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise LabelRestoreInputError(
                f"{name} contains {bad} non-finite value(s) (NaN or inf); label restoration needs finite "
                f"{_WHAT[name]}. Check the gradient computation (e.g. a diverged loss) or clean the values "
                "before calling."
            )
    _check_not_all_zero(method, requires, tensors)
    return LayerInputs(
        grad_weight=gw,
        grad_bias=tensors["grad_bias"],
        weight=w,
        bias=tensors["bias"],
        batch_size=k,
        num_classes=num_classes,
    )


def _check_not_all_zero(method: str, requires: Sequence[str], tensors: dict[str, torch.Tensor | None]) -> None:
    """Refuse an all-zero gradient where the method reads the labels: ``grad_bias`` if it needs it, else
    ``grad_weight``. (An all-zero ``grad_weight`` next to a nonzero ``grad_bias`` is a real case, embeddings that
    are all zero, e.g. dead ReLUs; iLRG is then exact.)"""
    name = "grad_bias" if "grad_bias" in requires else "grad_weight"
    t = tensors[name]
    if t is not None and not bool(t.any()):
        raise LabelRestoreInputError(
            f"{name} is all zero: the final-layer gradient carries no label information, nothing to restore "
            f"({method} reads the labels from {_WHAT[name]}). Check that the update holds this layer's gradients."
        )


def _missing_message(method: str, name: str) -> str:
    if name == "grad_bias":
        return (
            f"{method} needs grad_bias ({_WHAT[name]}) but got None. If the final layer has no bias, "
            f"{method} cannot run (iLRG divides each row of dL/dW by the class's bias gradient and solves "
            "a system whose right-hand side is K * dL/db); use a method that needs only grad_weight: "
            "idlg, gi, rlg or llg."
        )
    if name == "bias":
        return (
            f"{method} needs bias ({_WHAT[name]}) but got None: it computes class-wise probabilities "
            "softmax(W e + b). Pass the final layer's bias (a layer without bias has no bias gradient "
            "either, and then iLRG cannot run)."
        )
    return f"{method} needs {name} ({_WHAT[name]}) but got None; pass it."
