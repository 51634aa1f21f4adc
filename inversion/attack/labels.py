"""Label modes of the attack: which labels the dummies are optimised with.

- any registered label-restoration method (:func:`label_restore.available_methods`: ``ilrg``,
  ``idlg``, ..., and those registered at run time): restore the label counts from the shared
  update (:func:`~inversion.restore.restore_from_update`) and give the resulting K labels to the
  K dummies, fixed during optimisation;
- ``oracle``: the true labels, handed over explicitly by an experiment driver (an upper bound,
  for ablations; the only mode that reads anything private);
- ``joint``: unknown labels, one learnable logit vector per dummy, optimised with the
  images (DLG, Zhu et al. 2019);
- ``shared``: unknown labels, one learnable logit vector shared by the whole batch (the
  "IG" baseline of the iLRG paper).

:func:`label_modes` lists them, reading the method registry when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inversion.fl.update import SharedUpdate
from inversion.models import final_layer
from inversion.restore import restore_from_update
from inversion.restore.auxiliary import AuxiliaryData
from inversion.utils.errors import InputError
from label_restore import RestorationResult, available_methods

__all__ = ["LabelPlan", "batch_loss", "label_modes", "labels_in_use", "plan_labels"]

LEARNABLE = ("joint", "shared")


def label_modes() -> tuple[str, ...]:
    """Every valid label mode: ``oracle``, the learnable ones, then every registered restoration method."""
    return ("oracle", *LEARNABLE, *available_methods())


@dataclass
class LabelPlan:
    """The labels the attack uses.

    Attributes:
        mode: one of :func:`label_modes`.
        num_classes: C.
        batch_size: K.
        fixed: (K,) int64 labels for fixed modes (sorted by class), None for learnable ones.
        restoration: the label-restoration result for restoration modes, else None.
    """

    mode: str
    num_classes: int
    batch_size: int
    fixed: Tensor | None = None
    restoration: RestorationResult | None = None

    @property
    def learnable(self) -> bool:
        return self.fixed is None

    def initial_logits(self, generator: torch.Generator) -> Tensor | None:
        """Learnable label logits: (K, C) for ``joint``, (C,) for ``shared``, drawn N(0, 1); None if fixed."""
        if not self.learnable:
            return None
        shape = (self.batch_size, self.num_classes) if self.mode == "joint" else (self.num_classes,)
        return torch.randn(shape, generator=generator)


def plan_labels(
    mode: str,
    update: SharedUpdate,
    model: nn.Module,
    *,
    true_labels: Tensor | None = None,
    batch_size: int | None = None,
    aux: AuxiliaryData | None = None,
    **options: Any,
) -> LabelPlan:
    """The label plan of a mode for an update (restoration runs here, on the server's side).

    Args:
        mode: one of :func:`label_modes`.
        update: the shared update (public).
        model: the server's model.
        true_labels: (K,) the client's labels in its batch order, for ``oracle`` only (an evaluation upper
            bound). For a FedAvg update the oracle keeps that order, which decides the local mini-batches;
            for FedSGD (order-free) it sorts them, like the restored labels.
        batch_size: K when the update does not reveal it (``update.batch_size`` is None).
        aux: the server's labelled auxiliary data, for methods that read it (e.g. ``aux``;
            :func:`~inversion.restore.needs_auxiliary`, :mod:`inversion.restore.auxiliary`).
        options: the restoration method's options (e.g. ``missing_classes`` for ``aux``).

    Raises:
        ValueError: unknown mode, ``oracle`` without ``true_labels`` or with labels that are not K integers in
            [0, C), or an unknown or conflicting K.
    """
    modes = label_modes()
    if mode not in modes:
        raise InputError(f"unknown label mode {mode!r}; choose one of {', '.join(modes)}")
    if batch_size is not None and update.batch_size is not None and int(batch_size) != update.batch_size:
        raise InputError(f"batch_size={batch_size} contradicts the update, which says K={update.batch_size}")
    k = update.batch_size if update.batch_size is not None else batch_size
    if k is None:
        raise InputError("the update does not reveal the batch size K; pass batch_size (your guess of K)")
    num_classes = final_layer(model).out_features
    plan = LabelPlan(str(mode), num_classes, int(k))
    if mode == "oracle":
        if true_labels is None:
            raise InputError(
                "label mode 'oracle' needs the true labels: give the private batch (it is an "
                "evaluation upper bound, not an attack)"
            )
        labels = _known_labels(true_labels, plan)
        plan.fixed = labels.clone() if update.kind == "fedavg" else torch.sort(labels).values
    elif mode not in LEARNABLE:
        plan.restoration = restore_from_update(str(mode), update, model, batch_size=plan.batch_size, aux=aux, **options)
        plan.fixed = torch.as_tensor(plan.restoration.labels, dtype=torch.int64)
    return plan


def _known_labels(labels: Tensor, plan: LabelPlan) -> Tensor:
    """``labels`` as a (K,) int64 CPU tensor, checked: K integer class indices of the model's C classes."""
    integer = isinstance(labels, Tensor) and not (
        labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool
    )
    if not integer:
        kind = f"dtype {labels.dtype}" if isinstance(labels, Tensor) else f"a {type(labels).__name__}"
        raise InputError(f"known labels must be a tensor of integer class indices, got {kind}")
    if tuple(labels.shape) != (plan.batch_size,):
        raise InputError(f"oracle labels have shape {tuple(labels.shape)}, expected ({plan.batch_size},)")
    labels = labels.long().cpu()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= plan.num_classes):
        raise InputError(
            f"known labels must lie in [0, {plan.num_classes}) (the model's {plan.num_classes} classes); "
            f"got min {int(labels.min())}, max {int(labels.max())}"
        )
    return labels


def batch_loss(logits: Tensor, plan: LabelPlan, label_logits: Tensor | None, rows: slice = slice(None)) -> Tensor:
    """The client's loss on the dummies: mean cross-entropy over the dummies ``rows`` (as the client's update).

    Args:
        logits: model outputs on the dummies ``rows`` of the K, (|rows|, C).
        plan: the label plan.
        label_logits: for learnable modes, (K, C) or (C,) logits whose softmax is the soft label.
        rows: which of the K dummies ``logits`` are for (all by default; a FedAvg local mini-batch).
    """
    if plan.fixed is not None:
        return F.cross_entropy(logits, plan.fixed[rows].to(logits.device))
    assert label_logits is not None  # a plan without fixed labels has a learnable mode, which learns them
    soft = torch.softmax(label_logits if label_logits.ndim == 1 else label_logits[rows], dim=-1).expand_as(logits)
    return -(soft * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def labels_in_use(plan: LabelPlan, label_logits: Tensor | None) -> np.ndarray:
    """The hard labels (K,) the attack ends with: fixed ones, or the argmax of the learned logits."""
    if plan.fixed is not None:
        return plan.fixed.cpu().numpy()
    assert label_logits is not None  # a plan without fixed labels has a learnable mode, which learns them
    hard = label_logits.detach().argmax(dim=-1).cpu()
    return (hard.expand(plan.batch_size) if hard.ndim == 0 else hard).numpy().astype(np.int64)
