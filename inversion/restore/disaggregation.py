r"""The label method ``disaggregation``: the labels of the samples recovered exactly from the linear layers'
gradients, plus a final-layer method's counts for the samples left.

:func:`~inversion.attack.disaggregation.disaggregate` recovers n of the batch's K samples, each with the label
that explains its gradient at every linear layer (verified, not estimated). With their per-sample gradients
peeled off, the final layer's residual is the mean gradient of the K - n samples left (e.g. those a trained model
classifies with a loss too small to rise above the first layer's float noise); the ``fallback`` method (a
registered method that reads the final layer, iLRG by default) restores their counts from it with batch size
K - n. The counts are the recovered samples' labels counted, plus the fallback's counts.

**When the fallback refuses the residual** (its ValueError: iLRG on a final layer without a bias, or a residual
that is exactly zero), the K - n samples all go to the class the residual points at: the largest
:math:`-\nabla b_c = \frac{1}{K-n} \sum_k (y_{kc} - p_{kc})`, positive only for classes among the samples left
(without a bias, the largest row sum of :math:`-\nabla W`, which keeps that sign for nonnegative embeddings, as
after a ReLU); ties go to the lowest class. With no trace left this is a guess: a sentence in ``diagnostics``
says so, and ``details["fallback_refused"]`` holds the refusal.

Registered as ``disaggregation`` (``needs="update"``) when :mod:`inversion.restore` is imported; run it with
:func:`~inversion.restore.restore_from_update` or as a label mode of the attack.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from inversion.attack.disaggregation import TOLERANCE, disaggregate
from inversion.fl.update import SharedUpdate
from inversion.models import final_layer
from inversion.restore.auxiliary import AuxiliaryData, aux_restoration
from inversion.restore.from_update import final_layer_restoration
from inversion.utils.errors import InputError
from label_restore import RestorationResult, available_methods, method_spec
from label_restore.result import make_result

__all__ = ["disaggregation", "disaggregation_aux"]


def disaggregation(
    update: SharedUpdate,
    model: nn.Module,
    *,
    batch_size: int,
    fallback: str = "ilrg",
    tolerance: float = TOLERANCE,
    max_programmes: int | None = None,
) -> RestorationResult:
    """Restore the batch's label counts by disaggregating its samples (see the module docstring).

    Args:
        update: a FedSGD update, or a FedAvg one of at most one local epoch, holding the gradients of every linear
            layer of ``model``.
        model: the server's model (no batch norm).
        batch_size: K (used when the update does not reveal it).
        fallback: the registered final-layer method (``needs="final_layer"``) for the samples not recovered.
        tolerance, max_programmes: as :func:`~inversion.attack.disaggregation.disaggregate`.

    Returns:
        the counts (C,) summing to K; ``details``: ``recovered`` (n), ``visible``, ``programmes``, ``rounds``,
        ``stopped`` (why the search ended), ``fallback``, ``fallback_counts`` (C,) (the K - n samples' counts;
        zeros when n = K), ``fallback_refused`` (the fallback's refusal, or None), ``fallback_details`` (the
        fallback's own ``details``), ``recovered_labels`` (n,) in the order found.

    Raises:
        ValueError: a fallback that is not a final-layer method, or what
            :func:`~inversion.attack.disaggregation.disaggregate` refuses (several local epochs, batch norm, a
            linear layer's gradient missing).
    """
    _check_fallback(fallback)
    return _disaggregated_counts(update, model, batch_size, tolerance, max_programmes, fallback, None)


def disaggregation_aux(
    update: SharedUpdate,
    model: nn.Module,
    *,
    batch_size: int,
    aux: AuxiliaryData,
    missing_classes: str = "error",
    tolerance: float = TOLERANCE,
    max_programmes: int | None = None,
) -> RestorationResult:
    """:func:`disaggregation` with the method ``aux`` for the samples not recovered: the server's labelled
    auxiliary data (a stronger threat model, as ``aux``'s) restores their counts from the residual gradient
    (``missing_classes``: as ``aux``'s).

    Registered as ``disaggregation_aux``; :func:`~inversion.restore.restore_from_update` hands it ``aux=`` (it
    reads the auxiliary data: :func:`~inversion.restore.needs_auxiliary`).
    """
    return _disaggregated_counts(
        update, model, batch_size, tolerance, max_programmes, "aux", (aux, {"missing_classes": missing_classes})
    )


disaggregation_aux.reads_auxiliary = True  # type: ignore[attr-defined]


def _disaggregated_counts(
    update: SharedUpdate,
    model: nn.Module,
    batch_size: int,
    tolerance: float,
    max_programmes: int | None,
    fallback: str,
    aux: tuple[AuxiliaryData, dict[str, Any]] | None,
) -> RestorationResult:
    """The recovered samples' labels counted, plus ``fallback``'s counts of the rest (``aux``: the auxiliary data
    and ``aux``'s options)."""
    start = time.perf_counter()
    found = disaggregate(update, model, batch_size=batch_size, tolerance=tolerance, max_programmes=max_programmes)
    layer = final_layer(model)
    classes = layer.out_features
    recovered = np.bincount(found.labels, minlength=classes)
    rest = found.batch_size - found.found
    counts, raw, present = np.zeros(classes, dtype=np.int64), np.zeros(classes, dtype=np.int64), recovered > 0
    refused: str | None = None
    diagnostics: tuple[str, ...] = ()
    fallback_details: dict = {}
    if found.remaining_gradient is not None:
        grad_weight, grad_bias = found.remaining_gradient
        try:
            result = _fallback(fallback, update, model, grad_weight, grad_bias, rest, aux)
        except ValueError as err:
            refused = str(err)
            target, reading = _residual_class(grad_weight, grad_bias)
            counts = raw = np.bincount([target], minlength=classes) * rest
            present = present | (counts > 0)
            diagnostics = (
                f"the fallback {fallback} refused the residual gradient of the {rest} samples not recovered "
                f"({refused.rstrip('.')}); they were all put in class {target}, the residual's largest {reading}",
            )
        else:
            counts, raw, present = result.counts, result.raw_counts, present | result.present
            fallback_details = dict(result.details)
            diagnostics = tuple(
                f"fallback {fallback} on the {rest} samples not recovered: {d}" for d in result.diagnostics
            )
    details = {
        "recovered": found.found,
        "visible": found.visible,
        "programmes": found.programmes,
        "rounds": found.rounds,
        "stopped": found.stopped,
        "fallback": fallback,
        "fallback_counts": counts.tolist(),
        "fallback_refused": refused,
        "fallback_details": fallback_details,
        "recovered_labels": found.labels.tolist(),
    }
    result = make_result(
        "disaggregation" if aux is None else "disaggregation_aux",
        recovered + counts,
        recovered + raw,
        present,
        found.batch_size,
        details,
        diagnostics,
    )
    return dataclasses.replace(result, seconds=time.perf_counter() - start)


def _fallback(
    fallback: str,
    update: SharedUpdate,
    model: nn.Module,
    grad_weight: np.ndarray,
    grad_bias: np.ndarray | None,
    rest: int,
    aux: tuple[AuxiliaryData, dict[str, Any]] | None,
) -> RestorationResult:
    """``fallback``'s restoration of the ``rest`` samples not recovered, from their mean final-layer gradient."""
    layer = final_layer(model)
    if aux is not None:  # aux reads the residual as an update of its own: K - n samples, the final layer only
        names = {id(p): n for n, p in model.named_parameters()}
        gradients = {names[id(layer.weight)]: torch.as_tensor(grad_weight, dtype=torch.float32)}
        if grad_bias is not None and layer.bias is not None:
            gradients[names[id(layer.bias)]] = torch.as_tensor(grad_bias, dtype=torch.float32)
        residual = SharedUpdate.from_gradients(gradients, rest, update.meta, check_sign=False)
        return aux_restoration(residual, model, aux[0], rest, method=fallback, **aux[1])
    return final_layer_restoration(fallback, model, grad_weight, grad_bias, rest)


def _residual_class(grad_weight: np.ndarray, grad_bias: np.ndarray | None) -> tuple[int, str]:
    """The class the residual gradient (C, M), (C,) or None points at, and what was read: the largest
    :math:`-\\nabla b_c`, or without a bias the largest row sum of :math:`-\\nabla W` (ties: the lowest class)."""
    if grad_bias is not None:
        return int(np.argmax(-grad_bias)), "-grad_bias"
    return int(np.argmax(-grad_weight.sum(axis=1))), "-grad_weight row sum"


def _check_fallback(fallback: str) -> None:
    """InputError unless ``fallback`` is a registered method that reads the final layer alone."""
    final = [m for m in available_methods() if method_spec(m).needs == "final_layer"]
    if fallback not in final:
        raise InputError(
            f"fallback {fallback!r} is not a label method that reads the final layer alone; choose one of "
            f"{', '.join(final)}"
        )
