"""Label restoration on a :class:`~inversion.fl.update.SharedUpdate` and its model."""

from __future__ import annotations

from typing import Any

from torch import nn

from inversion.fl.update import SharedUpdate
from inversion.models import final_layer
from inversion.restore.auxiliary import AuxiliaryData, aux_restoration
from inversion.utils.errors import InputError
from label_restore import RestorationResult, available_methods, method_spec, restore_labels

__all__ = ["needs_auxiliary", "restore_from_update"]


def needs_auxiliary(method: str) -> bool:
    """Whether ``method`` is a registered label method that reads the server's auxiliary data (``aux=``).

    False for anything else, e.g. the attack's label modes ``oracle``, ``joint`` and ``shared``.
    """
    return method in available_methods() and method_spec(method).needs == "auxiliary"


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
    - ``"update"``: ``fn(update, model, batch_size=K, **options)``.

    Args:
        method: a registered label method (:func:`label_restore.available_methods`), e.g. ``"ilrg"``.
        update: the client's shared update (full or final-layer only).
        model: the shared model (its final layer is found by :func:`~inversion.models.final_layer`).
        batch_size: K, needed only when ``update.batch_size`` is None.
        aux: the server's labelled auxiliary data (:mod:`inversion.restore.auxiliary`), for methods that need it
            (:func:`needs_auxiliary`, e.g. ``aux``) only.
        options: method-specific keyword arguments (for ``aux``: ``missing_classes``, ``max_passes``).

    Raises:
        ValueError: unknown method, unknown K, ``aux`` missing for a method that needs it or given to one that
            does not, or the method's own refusal of its inputs.
        TypeError: a method that needs the update returned something else than a ``RestorationResult``.
    """
    spec = method_spec(method)
    k = update.batch_size if update.batch_size is not None else batch_size
    if k is None:
        raise InputError("the update does not reveal the batch size K; pass batch_size (your guess of K)")
    if spec.needs == "auxiliary":
        if aux is None:
            raise InputError(
                f"label method {method!r} needs the server's labelled auxiliary data: pass aux= "
                "(inversion.restore.auxiliary.draw_auxiliary)"
            )
        return aux_restoration(update, model, aux, int(k), method=method, **options)
    if aux is not None:
        raise InputError(f"aux= is auxiliary data for methods such as 'aux'; {method!r} does not read it")
    if spec.needs == "update":
        result = spec.fn(update, model, batch_size=int(k), **options)
        if not isinstance(result, RestorationResult):
            raise TypeError(f"label method {method!r} returned a {type(result).__name__}, not a RestorationResult")
        return result
    grad_weight, grad_bias = update.final_layer_gradients(model)
    layer = final_layer(model)
    return restore_labels(
        method,
        grad_weight=grad_weight,
        grad_bias=grad_bias,
        weight=layer.weight.detach(),
        bias=None if layer.bias is None else layer.bias.detach(),
        batch_size=int(k),
        **options,
    )
