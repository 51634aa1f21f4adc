"""Synthetic final layers and a timer for benchmarking restoration (used by ``scripts/bench_restore_speed.py``).

Two kinds of inputs, float32 like a real model's:

- ``random``: :math:`W \\sim \\mathcal N(0, 0.02^2)`, :math:`b \\sim \\mathcal N(0, 0.02^2)`,
  :math:`\\nabla W \\sim \\mathcal N(0, 10^{-6})`, :math:`\\nabla b \\sim \\mathcal N(0, 10^{-6})` centred to sum to 0.
- ``batch``: the exact mean-CE gradients of a batch of :math:`K` ReLU embeddings with random labels
  (the same :math:`W, b`), so the restored counts can be checked.
- ``aux_layer``: a batch and a labelled auxiliary set whose embeddings are a class prototype plus noise (so
  the class-conditional softmax means differ between classes), for the ``aux`` method.

:func:`time_call` gives the median and minimum wall time over several runs after a warm-up. No timing is
asserted anywhere in the tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["aux_layer", "batch_layer", "random_layer", "time_call"]


def random_layer(num_classes: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(grad_weight, grad_bias, weight, bias)`` drawn at random (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=g) * 0.02
    bias = torch.randn(num_classes, generator=g) * 0.02
    grad_weight = torch.randn(num_classes, dim, generator=g) * 1e-3
    grad_bias = torch.randn(num_classes, generator=g) * 1e-3
    return grad_weight, grad_bias - grad_bias.mean(), weight, bias


def batch_layer(num_classes: int, dim: int, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``(grad_weight, grad_bias, weight, bias, labels)`` of a random ReLU-embedding batch (mean CE)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=g) * 0.02
    bias = torch.randn(num_classes, generator=g) * 0.02
    emb = torch.relu(torch.randn(batch_size, dim, generator=g))
    labels = torch.randint(0, num_classes, (batch_size,), generator=g)
    resid = torch.softmax(emb @ weight.T + bias, dim=1) - torch.nn.functional.one_hot(labels, num_classes).float()
    return resid.T @ emb / batch_size, resid.mean(dim=0), weight, bias, labels


def aux_layer(num_classes: int, dim: int, batch_size: int, aux_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch and an auxiliary set with embeddings :math:`\\operatorname{relu}(\\mu_y + \\epsilon)`,
    :math:`\\mu_y \\sim \\mathcal N(0, 1)` per class, :math:`\\epsilon \\sim \\mathcal N(0, 1)` per sample.

    Returns:
        ``{"grad_bias" (C,), "weight" (C, M), "bias" (C,), "labels" (K,), "aux_embeddings" (N, M),
        "aux_labels" (N,)}``; the auxiliary softmax is ``softmax(aux_embeddings @ weight.T + bias)``.
    """
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=g) * 0.02
    bias = torch.randn(num_classes, generator=g) * 0.02
    prototypes = torch.randn(num_classes, dim, generator=g)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g)
    aux_labels = torch.randint(0, num_classes, (aux_size,), generator=g)
    emb = torch.relu(prototypes[labels] + torch.randn(batch_size, dim, generator=g))
    aux_emb = torch.relu(prototypes[aux_labels] + torch.randn(aux_size, dim, generator=g))
    resid = torch.softmax(emb @ weight.T + bias, dim=1) - torch.nn.functional.one_hot(labels, num_classes).float()
    return {
        "grad_bias": resid.mean(dim=0),
        "weight": weight,
        "bias": bias,
        "labels": labels,
        "aux_embeddings": aux_emb,
        "aux_labels": aux_labels,
    }


def time_call(fn: Callable[[], object], repeats: int = 15, warmup: int = 2) -> tuple[float, float]:
    """Median and minimum wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3), float(np.min(times) * 1e3)
