"""The memory a run needs, estimated before it starts, against the memory this machine has free.

A run that cannot fit is refused at once, with one line giving the estimate, the memory available and the
setting that turns the check off, instead of running out of memory (or swapping for hours) part-way. The
estimates count the float32 tensors a run holds at its peak, from a few numbers: the model's trainable
parameters P and the activations A of one input's forward pass (:func:`inversion.models.footprint`, found on
the meta device: nothing is allocated), the input size D = C·H·W and the batch size K:

- the client (:func:`client_memory`): its batch and the private copy of it (2·K·D), the model and its
  gradient (2·P), and for the inputs it differentiates at once (``rows``: a chunk, a local mini-batch, or the
  whole batch) their activations and, at the backward pass's peak, gradients of about half as many: 3/2·rows·A;
  with DP-SGD, Opacus's per-sample gradients, rows·P;
- the attack (:func:`attack_memory`): the dummies, the best ones so far and Adam's gradient and moments
  (5·K·D); its copy of the model, the shared gradient and the dummies' gradient (3·P); for FedSGD the
  activations of the K dummies and the graphs of the first and second derivatives (3·K·A); for FedAvg the S
  local steps unrolled, whose graph keeps every step's parameters, gradient and mini-batch activations until
  the end: S·(2·P + 2·B·A).

Left out: L-BFGS's history (up to 100 pairs of the optimised variable), restarts run batched on a GPU (R times
the dummies and activations), the priors' extra passes, and what the data source and Python hold; in the
first-layer span (:mod:`inversion.attack.span`) Adam's state is smaller than counted. It is a rough estimate,
meant to stop runs that are far too large (a claimed K of 10^9, 10^9 local steps) before they allocate
anything: on the CPU it came within 0.75 to 1.4 times the measured peak (FCN-3 and LeNet-5 on K of 2,048 to
32,768, ConvNet and ResNet-18 on K of 64 to 512; FedSGD clients and attacks, FedAvg attacks). Near the limit,
the ``memory_check`` settings run a refused run anyway.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import TYPE_CHECKING

import torch

from inversion.utils.errors import InputError

if TYPE_CHECKING:  # not at run time: inversion.models imports this module, and inversion.fl imports the models
    from inversion.fl.local import LocalTraining

__all__ = [
    "FLOAT_BYTES",
    "MemoryEstimate",
    "attack_memory",
    "available_memory",
    "check_memory",
    "client_memory",
    "format_bytes",
]

FLOAT_BYTES = 4
"""Bytes of one float32 value: every estimated tensor is float32."""


def format_bytes(count: int) -> str:
    """``count`` bytes in binary units with three significant digits, e.g. ``"1.5 GiB"``, ``"364 TiB"``."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            break
        size /= 1024
    return f"{size:.3g} {unit}" if unit != "B" else f"{int(count)} B"


@dataclass(frozen=True)
class MemoryEstimate:
    """The memory a run needs at its peak, estimated before it starts.

    Attributes:
        what: the run, for messages (e.g. ``"the attack on K=8 inputs of 1x28x28"``).
        parts: bytes by part (e.g. ``"activations"``).
    """

    what: str
    parts: Mapping[str, int]

    @property
    def total(self) -> int:
        """Bytes in all."""
        return sum(self.parts.values())

    def __str__(self) -> str:
        largest = sorted(self.parts.items(), key=lambda item: -item[1])
        return f"{format_bytes(self.total)} ({', '.join(f'{name} {format_bytes(n)}' for name, n in largest)})"


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes a run can still use on ``device``: a CUDA device's free memory; on the CPU the kernel's
    ``MemAvailable`` (free and reclaimable RAM, from /proc/meminfo), or the physical memory where that is
    not readable (not Linux)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(estimate: MemoryEstimate, device: torch.device | str, override: str, advice: str) -> None:
    """ValueError when ``estimate`` exceeds the memory available on ``device``.

    Args:
        estimate: what the run needs.
        device: where it runs.
        override: the boolean setting that turns the check off (e.g. ``"attack.memory_check"``).
        advice: how to make the run smaller (the settings to change), for the message.
    """
    free = available_memory(device)
    if estimate.total > free:
        raise InputError(
            f"{estimate.what} needs about {estimate}, more than the {format_bytes(free)} of memory free "
            f"on {torch.device(device)}: {advice}; or set {override}=false to run it anyway"
        )


def _shape(input_shape: Sequence[int]) -> str:
    return "x".join(str(int(side)) for side in input_shape)


def client_memory(
    parameters: int,
    activations: int,
    input_shape: Sequence[int],
    batch_size: int,
    *,
    chunk_size: int | None = None,
    local: LocalTraining | None = None,
    dp: bool = False,
    backward: bool = True,
) -> MemoryEstimate:
    """What a simulated client needs (see the module's docstring).

    Args:
        parameters: P, the model's trainable parameters.
        activations: A, the activation values of one input's forward pass.
        input_shape: (C, H, W).
        batch_size: K.
        chunk_size: FedSGD: inputs per forward/backward; None: the whole batch.
        local: FedAvg's schedule (its mini-batches of B inputs are differentiated one at a time); None: FedSGD.
        dp: DP-SGD (Opacus keeps every input's gradient of the rows it differentiates at once).
        backward: False for a client that computes no graph through the model (the final layer's gradient
            only): it keeps no activations then (not counted: the forward pass's own, and the K embeddings).
    """
    k, d = int(batch_size), prod(int(side) for side in input_shape)
    rows = local.batch_size if local is not None else k if dp or chunk_size is None else min(chunk_size, k)
    parts = {"batch": 2 * k * d, "model": 2 * parameters}
    if backward:
        parts["activations"] = 3 * rows * activations // 2
    if dp:
        parts["per-sample gradients"] = rows * parameters
    kind = "FedSGD" if local is None else "FedAvg"
    what = f"the client's {kind} update of K={k:,} inputs of {_shape(input_shape)}"
    return MemoryEstimate(what, {name: n * FLOAT_BYTES for name, n in parts.items()})


def attack_memory(
    parameters: int,
    activations: int,
    input_shape: Sequence[int],
    batch_size: int,
    *,
    local: LocalTraining | None = None,
) -> MemoryEstimate:
    """What the gradient-inversion attack on one update needs (see the module's docstring).

    Args:
        parameters, activations, input_shape: P, A and (C, H, W), as for :func:`client_memory`.
        batch_size: K, the dummies (as many as the update's batch).
        local: a FedAvg update's schedule, unrolled by the attack; None: FedSGD.
    """
    k, d = int(batch_size), prod(int(side) for side in input_shape)
    parts = {"dummies": 5 * k * d, "model": 3 * parameters}
    if local is None:
        parts["activations"] = 3 * k * activations
    else:
        parts["unrolled local steps"] = local.steps * (2 * parameters + 2 * local.batch_size * activations)
    what = f"the attack on K={k:,} inputs of {_shape(input_shape)}" + (
        "" if local is None else f" through {local.steps:,} local steps of {local.batch_size:,}"
    )
    return MemoryEstimate(what, {name: n * FLOAT_BYTES for name, n in parts.items()})
