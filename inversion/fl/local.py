"""FedAvg's local training: the client runs S optimizer steps on its K samples and shares the weight delta.

The protocol (public, recorded in :attr:`UpdateMeta.local`): ``steps`` S, local mini-batch size B, learning
rate η, and torch's SGD options momentum μ and weight decay λ; ``shuffle`` says whether the client reshuffles
its samples every local epoch (as a ``DataLoader(shuffle=True)`` does) or takes them in order. An epoch is
⌈K/B⌉ mini-batches; the last one is partial when B does not divide K (``drop_last=False``). Step ``s`` is
mini-batch ``j = s mod ⌈K/B⌉`` of epoch ``e = s div ⌈K/B⌉``: positions ``[jB, min((j+1)B, K))`` of that
epoch's order, a permutation of the K samples (:meth:`LocalTraining.orders`; the identity without shuffling,
otherwise the client's private draw, which the server never sees). Each step is torch's SGD on the
mini-batch's mean cross-entropy :math:`g_s`:

.. math::
    d_s = g_s + \\lambda \\theta_s,\\quad m_s = \\mu m_{s-1} + d_s\\ (m_0 = d_0),\\quad
    \\theta_{s+1} = \\theta_s - \\eta m_s,

and the update is :math:`\\Delta = \\theta_S - \\theta_0`. S = E·⌈K/B⌉ steps are E local epochs
(:meth:`LocalTraining.from_epochs`).

:func:`local_training_delta` is the client (a real ``torch.optim.SGD`` loop on a copy of the model);
:func:`unroll_local_training` is the same computation written functionally, differentiable w.r.t.
the inputs (Inverting Gradients' multi-step reconstructor), for the attack. With S = 1, B = K, no
momentum and no weight decay, :math:`\\Delta = -\\eta\\, g_{\\mathrm{FedSGD}}`.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
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


def _fraction(value: Any, what: str, upper: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < upper:
        raise InputError(f"{what} must be a number in [0, {upper:g}), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class LocalTraining:
    """The public schedule of a FedAvg client's local training (torch's SGD, see the module docstring).

    Attributes:
        steps: S, local optimizer steps (a positive integer).
        batch_size: B, samples per local mini-batch (a positive integer; the last mini-batch of an epoch
            holds the K mod B left over, when B does not divide K).
        lr: η, the local learning rate (finite, > 0).
        momentum: μ in [0, 1), torch's SGD momentum (dampening 0, not Nesterov).
        weight_decay: λ >= 0, torch's SGD weight decay (an L2 term λθ added to every gradient).
        shuffle: the client draws a new private order of its samples every local epoch; False: in order.
    """

    steps: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    shuffle: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", _positive(self.steps, "local steps"))
        object.__setattr__(self, "batch_size", _positive(self.batch_size, "local batch size"))
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not 0 < self.lr < math.inf:
            raise InputError(f"the local learning rate must be > 0 and finite, got {self.lr!r}")
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "momentum", _fraction(self.momentum, "the local momentum", 1.0))
        object.__setattr__(self, "weight_decay", _fraction(self.weight_decay, "the local weight decay", math.inf))
        if not isinstance(self.shuffle, bool):
            raise InputError(f"shuffle must be true or false, got {self.shuffle!r}")

    @classmethod
    def from_epochs(cls, epochs: int, batch_size: int, lr: float, k: int, **options: Any) -> LocalTraining:
        """The schedule of ``epochs`` full local epochs over K samples: S = E·⌈K/B⌉ steps.

        Args:
            epochs: E, local epochs (a positive integer).
            batch_size, lr: B and η.
            k: K, the client's number of samples (e.g. Flower's ``num-examples``).
            options: ``momentum``, ``weight_decay``, ``shuffle``.
        """
        epochs, k = _positive(epochs, "local epochs"), _positive(k, "the client's number of samples")
        return cls(epochs * math.ceil(k / _positive(batch_size, "local batch size")), batch_size, lr, **options)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalTraining:
        names = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping) or not {"steps", "batch_size", "lr"} <= set(data) <= names:
            raise InputError(
                f"local training must be {{steps, batch_size, lr}} with optional momentum, weight_decay and "
                f"shuffle, got {data!r}"
            )
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        """The schedule as plain data; options at their defaults are left out (older update files stay
        byte-identical, and so do their digests)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def batches_per_epoch(self, k: int) -> int:
        """⌈K/B⌉, the mini-batches of one local epoch over K samples."""
        return math.ceil(k / self.batch_size)

    def epochs(self, k: int) -> float:
        """E = S/⌈K/B⌉, local passes over the batch (fractional when the last epoch is cut short)."""
        return self.steps / self.batches_per_epoch(k)

    def epochs_started(self, k: int) -> int:
        """⌈E⌉, the local epochs that take at least one step: the rows of :meth:`orders`."""
        return math.ceil(self.epochs(k))

    def step_weights(self) -> Tensor:
        r"""(S,) float64: how much each step's gradient :math:`d_s` counts in the delta,
        :math:`\Delta = -\eta \sum_s w_s d_s` with :math:`w_s = (1 - \mu^{S-s}) / (1 - \mu)` (all 1 without
        momentum: the momentum buffer carries step s into the S - s steps that follow)."""
        remaining = torch.arange(self.steps, 0, -1, dtype=torch.float64)
        if not self.momentum:
            return torch.ones(self.steps, dtype=torch.float64)
        return (1 - self.momentum**remaining) / (1 - self.momentum)

    def epoch(self, step: int, k: int) -> int:
        """The local epoch (0-based) of step ``step`` (0-based)."""
        return step // self.batches_per_epoch(k)

    def rows(self, step: int, k: int) -> slice:
        """The positions of step ``step`` (0-based) in its epoch's order: mini-batch ``step mod ⌈K/B⌉``."""
        start = (step % self.batches_per_epoch(k)) * self.batch_size
        return slice(start, min(start + self.batch_size, k))

    def orders(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        """Each local epoch's order of the K samples, (⌈E⌉, K) int64: the identity without shuffling, else a
        permutation per epoch drawn from ``generator`` (the client's private randomness; required then)."""
        epochs = self.epochs_started(k)
        if not self.shuffle:
            return torch.arange(k).repeat(epochs, 1)
        if generator is None:
            raise InputError("a shuffling client draws its order from its own generator: pass generator=")
        return torch.stack([torch.randperm(k, generator=generator) for _ in range(epochs)])

    def check_orders(self, orders: Tensor, k: int) -> Tensor:
        """``orders`` as (⌈E⌉, K) int64 indices in [0, N) (N >= K: several epochs may index separate dummies),
        or a one-line InputError; what :meth:`orders` gives fits."""
        shape = (self.epochs_started(k), k)
        if not isinstance(orders, Tensor) or tuple(orders.shape) != shape or orders.is_floating_point():
            got = tuple(orders.shape) if isinstance(orders, Tensor) else type(orders).__name__
            raise InputError(f"the local order must be an integer tensor of shape {shape} (epochs, K), got {got}")
        if orders.numel() and int(orders.min()) < 0:
            raise InputError("the local order holds negative sample indices")
        return orders.long()

    def optimizer(self, params: Any) -> torch.optim.SGD:
        """torch's SGD over ``params`` with this schedule's learning rate, momentum and weight decay."""
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


def _order(local: LocalTraining, k: int, orders: Tensor | None) -> Tensor:
    """The client's per-epoch orders: given (checked), or the identity of an unshuffled schedule."""
    if orders is not None:
        return local.check_orders(orders, k)
    if local.shuffle:
        raise InputError(
            "this schedule shuffles: pass the client's orders (LocalTraining.orders(K, generator)), which only the "
            "client knows"
        )
    return local.orders(k)


def local_training_delta(
    model: nn.Module, images: Tensor, labels: Tensor, local: LocalTraining, orders: Tensor | None = None
) -> dict[str, Tensor]:
    """The client's FedAvg update: :math:`\\Delta = \\theta_S - \\theta_0` after the schedule's S local steps.

    Trains a copy of ``model`` (in its current train/eval mode) with ``torch.optim.SGD``; the caller's
    model is not changed.

    Args:
        model: the shared model :math:`\\theta_0`.
        images: the client's batch, (K, C, H, W), normalised.
        labels: (K,) int64.
        local: the schedule.
        orders: (⌈E⌉, K) each epoch's order of the samples (:meth:`LocalTraining.orders`); required when the
            schedule shuffles, the identity by default otherwise.

    Returns:
        parameter name -> :math:`\\Delta` (shaped as the parameter) for every trainable parameter.
    """
    client = copy.deepcopy(model)
    named = [(n, p) for n, p in client.named_parameters() if p.requires_grad]
    return run_local_training(client, named, local.optimizer([p for _, p in named]), images, labels, local, orders)


def run_local_training(
    client: nn.Module,
    named: list[tuple[str, nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    local: LocalTraining,
    orders: Tensor | None = None,
) -> dict[str, Tensor]:
    """The schedule's S steps of ``optimizer`` on ``client`` (the client's own copy, trained in place).

    Args:
        client: the module to train (e.g. a copy of the model, or Opacus's wrapper of one).
        named: (name, parameter) of the parameters ``optimizer`` steps, named as in the shared model.
        optimizer: the schedule's SGD (:meth:`LocalTraining.optimizer`, or Opacus's DP-SGD wrapping it).
        images, labels: the client's batch, (K, C, H, W) and (K,).
        local: the schedule.
        orders: as :func:`local_training_delta`'s.

    Returns:
        name -> :math:`\\theta_S - \\theta_0` of each parameter in ``named``.
    """
    k = labels.shape[0]
    orders = _order(local, k, orders)
    before = [p.detach().clone() for _, p in named]
    device = before[0].device
    for step in range(local.steps):
        samples = orders[local.epoch(step, k), local.rows(step, k)]
        optimizer.zero_grad()
        F.cross_entropy(client(images[samples].to(device)), labels[samples].to(device)).backward()
        optimizer.step()
    return {n: (p.detach() - start) for (n, p), start in zip(named, before)}


def unroll_local_training(
    model: nn.Module,
    local: LocalTraining,
    k: int,
    loss: Callable[[Mapping[str, Tensor], Tensor], Tensor],
    orders: Tensor | None = None,
    *,
    create_graph: bool = True,
    on_step: Callable[[int, Mapping[str, Tensor]], None] | None = None,
) -> dict[str, Tensor]:
    """The client's local training as one differentiable function of whatever ``loss`` depends on.

    Args:
        model: the shared model; its trainable parameters are :math:`\\theta_0`.
        local: the schedule.
        k: K, the client's batch size.
        loss: ``loss(theta, samples)`` -> the scalar mean loss of the samples at the (|b|,) int64 indices
            ``samples`` under parameters ``theta`` (name -> tensor; e.g. via ``torch.func.functional_call``).
        orders: (⌈E⌉, K) each epoch's order, as indices into whatever ``loss`` indexes (the K dummies, or
            one set of K per epoch: rows ``e·K ... e·K + K - 1``); required when the schedule shuffles.
        create_graph: keep the graph through every step (False: only the values, e.g. to compare orders).
        on_step: called with (step, :math:`\\theta_s`) before each step (e.g. to record the trajectory).

    Returns:
        parameter name -> :math:`\\Delta = \\theta_S - \\theta_0`, with the autograd graph through every
        step (second order: differentiate it w.r.t. the inputs of ``loss``).
    """
    orders = _order(local, k, orders)
    start = {n: p for n, p in model.named_parameters() if p.requires_grad}
    theta: dict[str, Tensor] = dict(start)
    buffers: list[Tensor] | None = None
    for step in range(local.steps):
        samples = orders[local.epoch(step, k), local.rows(step, k)]
        if on_step is not None:
            on_step(step, theta)
        grads = torch.autograd.grad(loss(theta, samples), list(theta.values()), create_graph=create_graph)
        if local.weight_decay:
            grads = tuple(g + local.weight_decay * t for g, t in zip(grads, theta.values()))
        if local.momentum and buffers is not None:
            grads = tuple(local.momentum * b + g for b, g in zip(buffers, grads))
        buffers = list(grads)
        theta = {n: t - local.lr * g for (n, t), g in zip(theta.items(), grads)}
    return {n: theta[n] - start[n] for n in theta}
