"""Label restoration on a :class:`~inversion.fl.update.SharedUpdate` and its model."""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from inversion.fl.update import SharedUpdate
from inversion.models import final_layer
from inversion.restore.auxiliary import AuxiliaryData, aux_restoration
from inversion.utils.errors import InputError
from label_restore import RestorationResult, available_methods, method_spec, restore_labels
from label_restore.consistency import (
    NoiseEstimate,
    NoisyGradientWarning,
    estimate_gradient_noise,
    noise_findings,
    with_noise_estimate,
)

__all__ = ["expected_class_sums", "final_layer_restoration", "needs_auxiliary", "restore_from_update", "update_noise"]

#: A clean FedAvg delta carries the rounding of the S local steps on the weights: class sums with
#: :math:`\hat\sigma` up to 0.21 machine epsilons times the final layer's RMS weight times :math:`\sqrt S`, in
#: delta units (measured: FCN-3 and LeNet-5, K = 8 and 32, S = 1 ... 8, η = 1e-3 and 0.1, momentum 0 and 0.9);
#: the rounding floor of :func:`update_noise` is this many of those units, scaled as the pseudo-gradient.
DELTA_ROUNDING_FACTOR = 1.0


def needs_auxiliary(method: str) -> bool:
    """Whether ``method`` is a registered label method that reads the server's auxiliary data (``aux=``): one that
    needs ``"auxiliary"``, or one that needs the ``"update"`` and marks its function ``reads_auxiliary = True``
    (e.g. ``disaggregation_aux``).

    False for anything else, e.g. the attack's label modes ``oracle``, ``joint`` and ``shared``.
    """
    if method not in available_methods():
        return False
    spec = method_spec(method)
    return spec.needs == "auxiliary" or (spec.needs == "update" and getattr(spec.fn, "reads_auxiliary", False))


def restore_from_update(
    method: str,
    update: SharedUpdate,
    model: nn.Module,
    *,
    batch_size: int | None = None,
    aux: AuxiliaryData | None = None,
    **options: Any,
) -> RestorationResult:
    """Restore the batch's label counts from a shared update, as the server would.

    Reads only what the server has: the update, the model and the batch size K (the update's, or ``batch_size``
    when the protocol does not reveal it), plus the server's auxiliary data where the method needs it. A shared
    update holds nothing private. What the method is handed depends on what it needs
    (:func:`label_restore.method_spec`):

    - ``"final_layer"``: the final layer's gradients from ``update`` and its current weight and bias from
      ``model`` (:func:`label_restore.restore_labels`);
    - ``"auxiliary"``: the same, plus the model's softmax outputs on ``aux`` and their labels; for a FedAvg update
      the server simulates the client's local training on ``aux`` (:func:`~.auxiliary.aux_restoration`);
    - ``"update"``: ``fn(update, model, batch_size=K, **options)``, plus ``aux=`` for a function marked
      ``reads_auxiliary`` (:func:`needs_auxiliary`).

    Args:
        method: a registered label method (:func:`label_restore.available_methods`), e.g. ``"ilrg"``.
        update: the client's shared update (full or final-layer only).
        model: the shared model (its final layer is found by :func:`~inversion.models.final_layer`).
        batch_size: K, needed only when ``update.batch_size`` is None.
        aux: the server's labelled auxiliary data (:mod:`inversion.restore.auxiliary`), for methods that need it
            (:func:`needs_auxiliary`, e.g. ``aux``) only.
        options: method-specific keyword arguments (for ``aux``: ``missing_classes``, ``max_passes``).

    Returns:
        the method's result, plus the noise level of the update's final-layer gradients (:func:`update_noise`) in
        ``details["noise"]`` (the fields of :class:`~label_restore.consistency.NoiseEstimate`: ``std`` per entry in
        (pseudo-)gradient units, ``count_noise`` in samples per class, ...) when the update holds them; when they
        are noise-dominated, a sentence with the numbers in ``diagnostics`` and a
        :class:`~label_restore.consistency.NoisyGradientWarning`.

    Raises:
        ValueError: unknown method, unknown K, ``aux`` missing for a method that needs it or given to one that
            does not, or the method's own refusal of its inputs.
        TypeError: a method that needs the update returned something else than a ``RestorationResult``.
    """
    k = update.batch_size if update.batch_size is not None else batch_size
    if k is None:
        raise InputError("the update does not reveal the batch size K; pass batch_size (your guess of K)")
    result = _restore(method, update, model, int(k), aux, options)
    if not _has_final_layer(update, model):  # a method that needs the update may read other layers only
        return result
    estimate = update_noise(update, model, int(k))
    for finding in noise_findings(estimate):
        warnings.warn(f"{method} (K={k}): {finding}", NoisyGradientWarning, stacklevel=2)
    clipping = _clipping_finding(update)
    if clipping is not None:
        result = dataclasses.replace(result, diagnostics=(*result.diagnostics, clipping))
    return with_noise_estimate(result, estimate)


def _clipping_finding(update: SharedUpdate) -> str | None:
    """A sentence when the update's metadata says the client clipped every sample's gradient (DP-SGD): clipping is
    no noise (the class sums stay 0), but it weighs each sample's :math:`p_k - y_k` by its own factor, so counts
    read from the final layer are biased; None otherwise."""
    dp = update.meta.notes.get("dp")
    clip = dp.get("max_grad_norm") if isinstance(dp, dict) else None
    if not isinstance(clip, (int, float)) or not math.isfinite(clip):
        return None
    return (
        f"the client clipped each sample's gradient to norm {clip:g} (DP-SGD, recorded in the update): the final "
        "layer weighs every sample's (p - y) by its own factor, so counts read from it are biased even without noise"
    )


def _restore(
    method: str, update: SharedUpdate, model: nn.Module, k: int, aux: AuxiliaryData | None, options: dict[str, Any]
) -> RestorationResult:
    """:func:`restore_from_update`'s dispatch on what the method needs."""
    spec = method_spec(method)
    if needs_auxiliary(method) and aux is None:
        raise InputError(
            f"label method {method!r} needs the server's labelled auxiliary data: pass aux= "
            "(inversion.restore.auxiliary.draw_auxiliary)"
        )
    if spec.needs == "auxiliary":
        assert aux is not None  # checked above
        return aux_restoration(update, model, aux, k, method=method, **options)
    if aux is not None and not needs_auxiliary(method):
        raise InputError(f"aux= is auxiliary data for methods such as 'aux'; {method!r} does not read it")
    if spec.needs == "update":
        extra = {"aux": aux} if aux is not None else {}
        result = spec.fn(update, model, batch_size=k, **extra, **options)
        if not isinstance(result, RestorationResult):
            raise TypeError(f"label method {method!r} returned a {type(result).__name__}, not a RestorationResult")
        return result
    grad_weight, grad_bias = update.final_layer_gradients(model)
    return final_layer_restoration(method, model, grad_weight, grad_bias, k, **options)


def final_layer_restoration(
    method: str, model: nn.Module, grad_weight: Any, grad_bias: Any, batch_size: int, **options: Any
) -> RestorationResult:
    """A final-layer method (:func:`label_restore.restore_labels`) on gradients (C, M) and (C,) or None of the
    model's final layer, with that layer's current weight and bias."""
    layer = final_layer(model)
    return restore_labels(
        method,
        grad_weight=grad_weight,
        grad_bias=grad_bias,
        weight=layer.weight.detach(),
        bias=None if layer.bias is None else layer.bias.detach(),
        batch_size=batch_size,
        **options,
    )


def _has_final_layer(update: SharedUpdate, model: nn.Module) -> bool:
    """Whether ``update`` holds the gradients of every parameter of the model's final layer."""
    names = {id(p): n for n, p in model.named_parameters()}
    return all(names[id(p)] in update.gradients for p in final_layer(model).parameters())


def expected_class_sums(update: SharedUpdate, model: nn.Module) -> np.ndarray | None:
    """The class sums of the update's final-layer pseudo-gradient without noise, when they are not 0.

    The cross-entropy part of every local gradient sums to 0 over the classes, so only weight decay λ adds to
    the sums: with :math:`u_s` the class sums of the final layer's weights at step s (one per column of W, then
    b's), torch's SGD gives :math:`d_s = \\lambda u_s`, :math:`m_s = \\mu m_{s-1} + d_s`,
    :math:`u_{s+1} = u_s - \\eta m_s`, all known to the server from the global model :math:`u_0` and the public
    schedule; the delta sums to :math:`u_S - u_0`, scaled as the pseudo-gradient is.

    Args:
        update: the shared update.
        model: the global model the client started from.

    Returns:
        float64, shape :math:`(M + 1,)` (:math:`(M,)` without a bias), laid out as
        :func:`label_restore.consistency.class_sums`; None for a FedSGD update or without weight decay.
    """
    local = update.meta.local
    if local is None or not local.weight_decay:
        return None
    layer = final_layer(model)
    start = np.concatenate([p.detach().double().cpu().sum(dim=0).reshape(-1).numpy() for p in layer.parameters()])
    sums, momentum_buffer = start, np.zeros_like(start)
    for step in range(local.steps):
        decay = local.weight_decay * sums
        momentum_buffer = decay if step == 0 else local.momentum * momentum_buffer + decay
        sums = sums - local.lr * momentum_buffer
    return (sums - start) * update.pseudo_gradient_scale


def update_noise(update: SharedUpdate, model: nn.Module, batch_size: int) -> NoiseEstimate:
    """The noise level of the update's final-layer (pseudo-)gradients, as the label methods receive them.

    :func:`label_restore.consistency.estimate_gradient_noise` on :meth:`SharedUpdate.final_layer_gradients`, with
    a FedAvg client's weight decay subtracted (:func:`expected_class_sums`) and the rounding of its S local steps
    on the weights added to the floor (:data:`DELTA_ROUNDING_FACTOR`).

    Args:
        update: the shared update (holding the final layer's gradients).
        model: the global model.
        batch_size: K.
    """
    grad_weight, grad_bias = update.final_layer_gradients(model)
    floor = 0.0
    local = update.meta.local
    if local is not None:
        weights = torch.cat([p.detach().double().reshape(-1) for p in final_layer(model).parameters()])
        rounding = torch.finfo(grad_weight.dtype).eps * float(weights.square().mean().sqrt()) * math.sqrt(local.steps)
        floor = DELTA_ROUNDING_FACTOR * rounding * abs(update.pseudo_gradient_scale)
    return estimate_gradient_noise(
        grad_weight.detach().cpu(),
        None if grad_bias is None else grad_bias.detach().cpu(),
        batch_size,
        expected_sums=expected_class_sums(update, model),
        rounding_floor=floor,
    )
