"""Label restoration on a :class:`~inversion.fl.update.SharedUpdate` and its model."""

from __future__ import annotations

from typing import Any

from torch import nn

from inversion.fl.update import SharedUpdate
from inversion.models import final_layer
from inversion.restore.auxiliary import AuxiliaryData, aux_restoration
from label_restore import RestorationResult, restore_labels

__all__ = ["restore_from_update"]


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

    Reads only what the server has: the final layer's gradients from ``update``, its
    current weight and bias from ``model`` and the batch size K (the update's, or ``batch_size``
    when the protocol does not reveal it). A shared update holds nothing private.

    Args:
        method: a :data:`label_restore.METHOD_NAMES` entry, e.g. ``"ilrg"``.
        update: the client's shared update (full or final-layer only).
        model: the shared model (its final layer is found by :func:`~inversion.models.final_layer`).
        batch_size: K, needed only when ``update.batch_size`` is None.
        aux: the server's labelled auxiliary data, for ``method="aux"`` only (see :mod:`inversion.restore.auxiliary`).
        options: method-specific keyword arguments (for ``aux``: ``missing_classes``, ``max_passes``).
    """
    k = update.batch_size if update.batch_size is not None else batch_size
    if k is None:
        raise ValueError("the update does not reveal the batch size K; pass batch_size (your guess of K)")
    if method == "aux":
        if aux is None:
            raise ValueError(
                "label method 'aux' needs the server's labelled auxiliary data: pass aux= "
                "(inversion.restore.auxiliary.draw_auxiliary)"
            )
        return aux_restoration(update, model, aux, int(k), **options)
    if aux is not None:
        raise ValueError(f"aux= is auxiliary data for the 'aux' method; {method!r} does not read it")
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
