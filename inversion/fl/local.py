"""FedAvg's local training: the client runs S steps of SGD on its K samples and shares the weight delta.

The protocol (public, recorded in :attr:`UpdateMeta.local`): ``steps`` S, local mini-batch size B
(a divisor of K) and learning rate η. Mini-batches are taken in order, cycling over the batch: step
``s`` uses samples ``[(s mod K/B)·B, (s mod K/B)·B + B)``, so S = E·K/B steps are E local epochs.
Each step is plain SGD on the mini-batch's mean cross-entropy,
:math:`\\theta_{s+1} = \\theta_s - \\eta \\nabla_\\theta \\ell(\\theta_s; x_{b_s}, y_{b_s})`, and the update
is :math:`\\Delta = \\theta_S - \\theta_0`.

:func:`local_training_delta` is the client (a real ``torch.optim.SGD`` loop on a copy of the model);
:func:`unroll_local_training` is the same computation written functionally, differentiable w.r.t.
the inputs (Inverting Gradients' multi-step reconstructor), for the attack. With S = 1 and B = K,
:math:`\\Delta = -\\eta\\, g_{\\mathrm{FedSGD}}`.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inversion.utils.errors import InputError

__all__ = ["LocalTraining", "local_training_delta", "run_local_training", "unroll_local_training"]


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LocalTraining:
    """The public schedule of a FedAvg client's local training.

    Attributes:
        steps: S, local SGD steps (a positive integer).
        batch_size: B, samples per local step (a positive integer dividing the client's K).
        lr: η, the local learning rate (finite, > 0).
    """

    steps: int
    batch_size: int
    lr: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", _positive(self.steps, "local steps"))
        object.__setattr__(self, "batch_size", _positive(self.batch_size, "local batch size"))
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not 0 < self.lr < math.inf:
            raise InputError(f"the local learning rate must be > 0 and finite, got {self.lr!r}")
        object.__setattr__(self, "lr", float(self.lr))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalTraining:
        if not isinstance(data, Mapping) or set(data) != {"steps", "batch_size", "lr"}:
            raise InputError(f"local training must be {{steps, batch_size, lr}}, got {data!r}")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, k: int) -> None:
        """ValueError unless B divides the client's K."""
        if k % self.batch_size:
            raise InputError(f"the local batch size {self.batch_size} must divide the client's batch size {k}")

    def rows(self, step: int, k: int) -> slice:
        """The samples of local step ``step`` (0-based) among the K: mini-batches in order, cycling."""
        start = (step % (k // self.batch_size)) * self.batch_size
        return slice(start, start + self.batch_size)

    def epochs(self, k: int) -> float:
        """E = S·B/K, local passes over the batch."""
        return self.steps * self.batch_size / k


def local_training_delta(model: nn.Module, images: Tensor, labels: Tensor, local: LocalTraining) -> dict[str, Tensor]:
    """The client's FedAvg update: :math:`\\Delta = \\theta_S - \\theta_0` after S local SGD steps.

    Trains a copy of ``model`` (in its current train/eval mode) with ``torch.optim.SGD``; the caller's
    model is not changed.

    Args:
        model: the shared model :math:`\\theta_0`.
        images: the client's batch, (K, C, H, W), normalised.
        labels: (K,) int64.
        local: the schedule.

    Returns:
        parameter name -> :math:`\\Delta` (shaped as the parameter) for every trainable parameter.
    """
    client = copy.deepcopy(model)
    named = [(n, p) for n, p in client.named_parameters() if p.requires_grad]
    return run_local_training(client, named, torch.optim.SGD([p for _, p in named], lr=local.lr), images, labels, local)


def run_local_training(
    client: nn.Module,
    named: list[tuple[str, nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    local: LocalTraining,
) -> dict[str, Tensor]:
    """The schedule's S steps of ``optimizer`` on ``client`` (the client's own copy, trained in place).

    Args:
        client: the module to train (e.g. a copy of the model, or Opacus's wrapper of one).
        named: (name, parameter) of the parameters ``optimizer`` steps, named as in the shared model.
        optimizer: an SGD optimizer (or Opacus's DP-SGD one) over those parameters, at ``local.lr``.
        images, labels: the client's batch, (K, C, H, W) and (K,).
        local: the schedule.

    Returns:
        name -> :math:`\theta_S - \theta_0` of each parameter in ``named``.
    """
    k = labels.shape[0]
    local.check(k)
    before = [p.detach().clone() for _, p in named]
    device = before[0].device
    for step in range(local.steps):
        rows = local.rows(step, k)
        optimizer.zero_grad()
        F.cross_entropy(client(images[rows].to(device)), labels[rows].to(device)).backward()
        optimizer.step()
    return {n: (p.detach() - start) for (n, p), start in zip(named, before)}


def unroll_local_training(
    model: nn.Module, local: LocalTraining, k: int, loss: Callable[[Mapping[str, Tensor], slice], Tensor]
) -> dict[str, Tensor]:
    """The client's local training as one differentiable function of whatever ``loss`` depends on.

    Args:
        model: the shared model; its trainable parameters are :math:`\\theta_0`.
        local: the schedule.
        k: K, the client's batch size.
        loss: ``loss(theta, rows)`` -> the scalar mean loss of samples ``rows`` under parameters
            ``theta`` (name -> tensor; e.g. via ``torch.func.functional_call``).

    Returns:
        parameter name -> :math:`\\Delta = \\theta_S - \\theta_0`, with the autograd graph through every
        step (second order: differentiate it w.r.t. the inputs of ``loss``).
    """
    local.check(k)
    start = {n: p for n, p in model.named_parameters() if p.requires_grad}
    theta: dict[str, Tensor] = dict(start)
    for step in range(local.steps):
        grads = torch.autograd.grad(loss(theta, local.rows(step, k)), list(theta.values()), create_graph=True)
        theta = {n: t - local.lr * g for (n, t), g in zip(theta.items(), grads)}
    return {n: theta[n] - start[n] for n in theta}
