"""Timing of the restoration methods on synthetic final layers: ``python -m label_restore.benchmark``.

Two kinds of inputs, float32 like a real model's:

- ``random``: :math:`W \\sim \\mathcal N(0, 0.02^2)`, :math:`b \\sim \\mathcal N(0, 0.02^2)`,
  :math:`\\nabla W \\sim \\mathcal N(0, 10^{-6})`, :math:`\\nabla b \\sim \\mathcal N(0, 10^{-6})` centred to sum to 0.
- ``batch``: the exact mean-CE gradients of a batch of :math:`K` ReLU embeddings with random labels
  (the same :math:`W, b`), so the restored counts can be checked.

Reports the median and minimum wall time of ``restore_labels`` (validation included) over several runs after
a warm-up. No timing is asserted anywhere in the tests.
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch

from .api import restore_labels
from .metrics import counts_from_labels, label_metrics

__all__ = ["random_layer", "batch_layer", "time_call", "main"]


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--solvers", default="auto,gelsy,pinv")
    args = parser.parse_args(argv)
    k = args.batch_size
    print(f"torch threads: {torch.get_num_threads()}")
    for c, m in ((1000, 2048), (100, 84)):
        layers = {"random": random_layer(c, m), "batch": batch_layer(c, m, k)}
        for kind, layer in layers.items():
            gw, gb, w, b = layer[:4]
            for solver in args.solvers.split(","):
                def call(solver: str = solver) -> object:
                    return restore_labels("ilrg", gw, gb, w, b, k, solver=solver)

                repeats = max(3, args.repeats // 3) if solver in ("pinv", "gelsd") else args.repeats
                med, best = time_call(call, repeats=repeats)
                r = call()
                note = f"solver ran: {r.details['solver']}"
                if kind == "batch":
                    mets = label_metrics(r.raw_counts, counts_from_labels(layer[4], c))
                    note += f", LnAcc {mets['LnAcc']:.3f}"
                print(f"ilrg C={c:5d} M={m:5d} K={k} {kind:6s} solver={solver:5s}: "
                      f"median {med:8.2f} ms  min {best:8.2f} ms  ({note})")
        gw, gb, w, b = layers["batch"][:4]
        for name in ("idlg", "gi", "llg", "bias_corrected"):
            med, best = time_call(lambda: restore_labels(name, gw, gb, w, b, k), repeats=args.repeats)
            print(f"{name:14s} C={c:5d} M={m:5d} K={k} batch : median {med:8.2f} ms  min {best:8.2f} ms")


if __name__ == "__main__":
    main()
