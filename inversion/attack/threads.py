"""CPU threads of an attack: one for a small problem, torch's count (all cores) otherwise.

A small problem's operations are too short for a second thread to pay for waking it: on the 2-core development
machine (``scripts/bench_threads.py``; docs/attack.md, "CPU threads on a shared machine") the default run
(FCN-3, K=8, 5 MFLOP per forward pass of the batch) and LeNet-5 on K=8 CIFAR images (10 MFLOP) ran 10-20 %
faster on one thread than on two on a quiet machine, and beside busy processes one thread also avoids waiting
for a second one that the scheduler has set aside. From about 30 MFLOP on (FCN-3 on K=50, LeNet-5 on K=64,
ResNet-18) two threads are faster. Together with OpenMP's passive waiting (:mod:`inversion.utils.openmp`) this
keeps a small attack from collapsing on a shared machine.

A user's choice wins: with ``OMP_NUM_THREADS`` set, the count is left alone. Either way the count is
deterministic for a given problem, so CPU results stay bit-reproducible (they depend on the thread count,
which ``results.json`` records).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from inversion.models import forward_flops

__all__ = ["SMALL_FORWARD_FLOPS", "attack_threads", "threads_for"]

SMALL_FORWARD_FLOPS = 25e6
"""A problem whose forward pass over the whole batch costs fewer FLOPs than this runs on one CPU thread."""


def threads_for(model: nn.Module, input_shape: Sequence[int], batch_size: int, device: torch.device | str) -> int:
    """The CPU threads an attack on ``batch_size`` inputs of ``input_shape`` (C, H, W) through ``model`` uses:
    1 when its forward pass over the batch costs under :data:`SMALL_FORWARD_FLOPS`, else torch's current
    count; torch's count, too, on a GPU (the CPU only feeds it) or when ``OMP_NUM_THREADS`` is set."""
    current = torch.get_num_threads()
    if torch.device(device).type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return current
    return 1 if batch_size * forward_flops(model, input_shape) < SMALL_FORWARD_FLOPS else current


@contextmanager
def attack_threads(
    model: nn.Module, input_shape: Sequence[int], batch_size: int, device: torch.device | str
) -> Iterator[int]:
    """Within the block, torch uses :func:`threads_for`'s count of CPU threads; the earlier count is restored
    after it. Yields that count."""
    before = torch.get_num_threads()
    chosen = threads_for(model, input_shape, batch_size, device)
    torch.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        torch.set_num_threads(before)
