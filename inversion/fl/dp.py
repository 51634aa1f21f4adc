"""DP-SGD on the client, through Opacus: per-sample clipping and Gaussian noise, with its privacy accounting.

At every local step (one for FedSGD, S for FedAvg) Opacus computes each sample's gradient
(:class:`opacus.GradSampleModule`), clips it to L2 norm ``max_grad_norm`` C, sums them, adds
Gaussian noise of standard deviation σ·C (``noise_multiplier`` σ) and divides by the mini-batch
size (:class:`opacus.optimizers.DPOptimizer`). A FedSGD client shares that privatized gradient; a
FedAvg client steps with it and shares its weight delta. The noise comes from a generator seeded
with 63 bits of OS entropy (:func:`noise_seed`) unless the experiment fixes the seed; the seed is the
client's secret (whoever knows it regenerates the noise and subtracts it exactly); σ, C, δ and the
accountant's ε are public.

ε comes from Opacus's RDP accountant for ``steps`` compositions at sampling rate ``B/K``. The
accountant assumes Poisson sampling; this client takes its mini-batches in order, so the ε is the
usual DP-SGD report, not a proof for this exact schedule. FedSGD (one step over the whole batch)
has rate 1: no amplification by sampling.

Opacus is imported lazily: only this module needs it (``pip install opacus``, the ``dp`` extra).
Batch norm mixes the samples of a batch, so a model with batch-norm layers is refused.
"""

from __future__ import annotations

import copy
import math
import secrets
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inversion.fl.local import LocalTraining, run_local_training
from inversion.utils.errors import InputError

__all__ = ["DPSGD", "check_dp_model", "dp_client_tensors", "noise_seed", "per_sample_gradients"]


@dataclass(frozen=True)
class DPSGD:
    """The client's DP-SGD settings (public, recorded with the update).

    Attributes:
        noise_multiplier: σ; the noise's standard deviation is σ·C per step, before the division by B.
        max_grad_norm: C, the per-sample clipping norm (``inf``: no clipping, only with σ = 0).
        delta: δ of the reported (ε, δ).
    """

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not self.noise_multiplier >= 0:
            raise InputError(f"the DP noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise InputError(f"the DP clipping norm must be > 0, got {self.max_grad_norm}")
        if math.isinf(self.max_grad_norm) and self.noise_multiplier > 0:
            raise InputError("noise with an infinite clipping norm has infinite variance: give a finite max_grad_norm")
        if not 0 < self.delta < 1:
            raise InputError(f"the DP delta must be in (0, 1), got {self.delta}")

    def epsilon(self, sample_rate: float, steps: int) -> float | None:
        """ε of Opacus's RDP accountant after ``steps`` steps at ``sample_rate``; None without noise (ε = ∞)."""
        if self.noise_multiplier == 0:
            return None
        from opacus.accountants import RDPAccountant

        accountant = RDPAccountant()
        accountant.history = [(self.noise_multiplier, sample_rate, steps)]
        return float(accountant.get_epsilon(self.delta))

    def record(self, k: int, local: LocalTraining | None) -> dict[str, Any]:
        """The public facts of this DP-SGD run for ``UpdateMeta.notes``: σ, C, δ, ε and how ε was accounted."""
        steps, batch = (1, k) if local is None else (local.steps, local.batch_size)
        return {
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "delta": self.delta,
            "epsilon": self.epsilon(batch / k, steps),
            "accountant": f"opacus RDP, {steps} step(s) at sampling rate {batch}/{k} (assumes Poisson sampling)",
        }


@contextmanager
def _quiet_hooks():
    """Opacus's backward hooks warn that the inputs need no gradient: true, and harmless here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        yield


def noise_seed(fixed: int | None = None) -> int:
    """The seed of a client's DP noise: ``fixed`` (a reproducible experiment; anyone who knows it can regenerate
    the noise and remove it) or, when None, 63 fresh bits of OS entropy (:func:`secrets.randbits`)."""
    return secrets.randbits(63) if fixed is None else int(fixed)


def check_dp_model(model: nn.Module) -> None:
    """ValueError if ``model`` has batch norm (DP-SGD needs per-sample gradients)."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise InputError(
            "DP-SGD needs per-sample gradients, and batch norm mixes the samples of a batch: "
            "use a model without batch norm (e.g. fcn3, lenet5)"
        )


def per_sample_gradients(model: nn.Module, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Each sample's gradient of its cross-entropy, as Opacus computes them (``p.grad_sample``).

    Returns:
        parameter name -> (K, *parameter shape).
    """
    from opacus import GradSampleModule

    check_dp_model(model)
    wrapped = GradSampleModule(copy.deepcopy(model).train())  # Opacus records activations in train mode only
    with _quiet_hooks():
        F.cross_entropy(wrapped(images), labels).backward()  # mean, as the client: Opacus rescales by K
    return {n: p.grad_sample.detach().clone() for n, p in wrapped._module.named_parameters() if p.requires_grad}


def dp_client_tensors(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    dp: DPSGD,
    *,
    local: LocalTraining | None = None,
    orders: Tensor | None = None,
    seed: int | None = None,
) -> dict[str, Tensor]:
    """What a DP-SGD client shares: the privatized gradient (FedSGD) or the weight delta of S privatized steps.

    Trains a copy of ``model`` in train mode (Opacus records activations only there; without batch
    norm this differs from eval mode only where the model has dropout); the caller's model is not changed.

    Args:
        model: the shared model (no batch norm).
        images: the client's batch, (K, C, H, W), normalised.
        labels: (K,) int64.
        dp: σ, C, δ.
        local: FedAvg's schedule; None: FedSGD (one step over the whole batch).
        orders: (⌈E⌉, K) the client's per-epoch sample orders (:meth:`LocalTraining.orders`), for a shuffling
            schedule.
        seed: seeds the noise (the client's secret); None: a fresh high-entropy seed (:func:`noise_seed`).

    Returns:
        parameter name -> the privatized gradient (FedSGD) or :math:`\\theta_S - \\theta_0` (FedAvg).
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    check_dp_model(model)
    k = labels.shape[0]
    client = GradSampleModule(copy.deepcopy(model).train())
    named = [(n, p) for n, p in client._module.named_parameters() if p.requires_grad]  # the model's own names
    device = named[0][1].device
    optimizer = DPOptimizer(
        torch.optim.SGD([p for _, p in named], lr=1.0) if local is None else local.optimizer([p for _, p in named]),
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=sys.float_info.max if math.isinf(dp.max_grad_norm) else dp.max_grad_norm,  # σ·C = 0, not nan
        expected_batch_size=k if local is None else local.batch_size,
        generator=torch.Generator(device=device).manual_seed(noise_seed(seed)),
    )
    with _quiet_hooks():
        if local is not None:
            return run_local_training(client, named, optimizer, images, labels, local, orders)
        F.cross_entropy(client(images.to(device)), labels.to(device)).backward()
    optimizer.pre_step()  # clip, add noise, scale: p.grad is the privatized gradient
    return {n: p.grad.detach().clone() for n, p in named}
