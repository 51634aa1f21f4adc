"""Anisotropic total variation (the Inverting Gradients definition)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .errors import PriorsInputError
from .registry import register_prior

__all__ = ["TotalVariation", "total_variation"]


def total_variation(x: Tensor) -> Tensor:
    r"""Anisotropic total variation, averaged over elements.

    .. math::
        \mathrm{TV}(x) = \operatorname{mean} |x_{\dots, i, j+1} - x_{\dots, i, j}|
                       + \operatorname{mean} |x_{\dots, i+1, j} - x_{\dots, i, j}|

    Each mean runs over all elements of its difference tensor (every image, channel and position),
    unlike :func:`kornia.losses.total_variation`, which returns per-image sums.

    Args:
        x: images of shape :math:`(*, H, W)`, typically :math:`(B, C, H, W)`, with :math:`H, W \ge 2`.

    Returns:
        a scalar tensor (differentiable w.r.t. ``x``).

    Example:
        >>> import torch
        >>> total_variation(torch.tensor([[0.0, 1.0], [2.0, 4.0]]))  # (1 + 2) / 2 + (2 + 3) / 2
        tensor(4.)
    """
    if x.ndim < 2 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise PriorsInputError(f"total_variation needs images of shape (*, H, W) with H, W >= 2; got {tuple(x.shape)}")
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return horizontal + vertical


class TotalVariation(nn.Module):
    """Module form of :func:`total_variation`: ``(*, H, W) -> ()``; a built prior (:mod:`priors.registry`), which
    reads neither ``match`` nor ``generator``."""

    def forward(
        self, x: Tensor, *, match: Callable[[Tensor], Tensor] | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        return total_variation(x)


register_prior("tv", TotalVariation)
