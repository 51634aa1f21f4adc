"""Batch-norm statistics prior (DeepInversion, Yin et al., CVPR 2020).

The dummy batch should make every batch-norm layer see features whose per-channel batch statistics match the
layer's running statistics (those of the client's training data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .errors import PriorsInputError
from .registry import register_prior

__all__ = ["BNStatistics", "bn_statistics_loss"]


def bn_statistics_loss(features: Tensor, running_mean: Tensor, running_var: Tensor) -> Tensor:
    r"""Distance between a batch's per-channel statistics and a batch-norm layer's running ones.

    .. math:: \lVert \mu(f) - \mu_{\mathrm{run}} \rVert_2 + \lVert \sigma^2(f) - \sigma^2_{\mathrm{run}} \rVert_2

    with :math:`\mu(f)` and the biased :math:`\sigma^2(f)` taken per channel over the batch and all spatial
    positions (every dimension but dimension 1), as batch norm computes them.

    Args:
        features: the layer's input, :math:`(N, C)` or :math:`(N, C, *)`.
        running_mean: :math:`(C,)`.
        running_var: :math:`(C,)`.

    Returns:
        a scalar tensor (differentiable w.r.t. ``features``).
    """
    if features.ndim < 2:
        raise PriorsInputError(f"batch-norm features must have shape (N, C, *); got {tuple(features.shape)}")
    dims = [0, *range(2, features.ndim)]
    var, mean = torch.var_mean(features, dim=dims, correction=0)
    return torch.linalg.vector_norm(mean - running_mean) + torch.linalg.vector_norm(var - running_var)


class BNStatistics:
    r"""DeepInversion's feature-statistics prior, read from forward hooks on a model's batch-norm layers.

    Hooks every ``nn.BatchNorm1d/2d/3d`` (:class:`~torch.nn.modules.batchnorm._BatchNorm`) that keeps running
    statistics. During each forward pass of the model, every call of a hooked layer computes
    :func:`bn_statistics_loss` of its input against its running statistics (read *before* the layer runs, so a
    train-mode forward does not compare the batch with statistics it has just updated); the autograd graph is
    kept. :meth:`value` returns

    .. math:: \sum_{\ell} \lVert \mu_\ell(x) - \mu_\ell^{\mathrm{run}} \rVert_2
                          + \lVert \sigma^2_\ell(x) - \sigma^{2,\mathrm{run}}_\ell \rVert_2

    summed over the batch-norm calls :math:`\ell` of the **most recent** forward of the model (the caller runs
    it on the dummy batch ``x``, with autograd enabled, before asking; this class runs nothing). Works in train or eval
    mode: the statistics are always those of the input batch.

    Calling it (a built prior, :mod:`priors.registry`) returns :meth:`value`; ``x``, ``match`` and ``generator``
    are not read. Use :meth:`remove` (or a ``with`` block) to detach the hooks.

    Raises:
        ValueError: the model has no batch-norm layer with running statistics.
    """

    def __init__(self, model: nn.Module) -> None:
        layers = [
            m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        if not layers:
            raise PriorsInputError(
                "the 'bn' prior does not apply: the model has no batch-norm layers with running statistics "
                "(nn.BatchNorm1d/2d/3d, track_running_stats=True); set its weight to 0"
            )
        self._losses: list[Tensor] = []
        self._handles: list[RemovableHandle] = [model.register_forward_pre_hook(self._reset)]
        self._handles += [layer.register_forward_pre_hook(self._record) for layer in layers]

    def _reset(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        self._losses = []

    def _record(self, layer: nn.modules.batchnorm._BatchNorm, inputs: tuple[Any, ...]) -> None:
        mean, var = layer.running_mean, layer.running_var
        assert mean is not None and var is not None  # hooked layers track running statistics
        self._losses.append(bn_statistics_loss(inputs[0], mean, var))

    def value(self) -> Tensor:
        """The prior for the most recent forward pass: a scalar tensor with its autograd graph."""
        if not self._handles:
            raise RuntimeError("BNStatistics.value(): the hooks have been removed")
        if not self._losses:
            raise RuntimeError(
                "BNStatistics.value(): no batch-norm statistics recorded; run the model's forward on the batch first"
            )
        return torch.stack(self._losses).sum()

    def __call__(
        self, x: Tensor, *, match: Callable[[Tensor], Tensor] | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """:meth:`value` (the prior for the model's most recent forward, which the caller ran on ``x``)."""
        return self.value()

    def remove(self) -> None:
        """Detach every hook and drop the recorded statistics (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles, self._losses = [], []

    def __enter__(self) -> BNStatistics:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


register_prior("bn", BNStatistics, needs_model=True, batchable=False)
