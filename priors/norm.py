"""Image-norm prior (DeepInversion's ``l2`` term)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .errors import PriorsInputError
from .registry import register_prior

__all__ = ["L2Norm", "l2_norm"]


def l2_norm(x: Tensor) -> Tensor:
    r"""Mean over the batch of each image's Euclidean norm.

    .. math:: \mathcal{R}_{\ell_2}(x) = \frac1B \sum_{b=1}^{B} \lVert x_b \rVert_2

    Args:
        x: a batch of shape :math:`(B, *)` with at least one non-batch dimension, typically :math:`(B, C, H, W)`.

    Returns:
        a scalar tensor (differentiable w.r.t. ``x``; its gradient is :math:`x_b / (B \lVert x_b \rVert_2)`).

    Example:
        >>> import torch
        >>> l2_norm(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))  # (5 + 1) / 2
        tensor(3.)
    """
    if x.ndim < 2 or x.shape[0] == 0:
        raise PriorsInputError(f"l2_norm needs a non-empty batch of shape (B, D, ...); got {tuple(x.shape)}")
    return x.flatten(1).norm(dim=1).mean()


class L2Norm(nn.Module):
    """Module form of :func:`l2_norm`: ``(B, *) -> ()``; a built prior (:mod:`priors.registry`), which reads neither
    ``match`` nor ``generator``."""

    def forward(
        self, x: Tensor, *, match: Callable[[Tensor], Tensor] | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        return l2_norm(x)


register_prior("l2", L2Norm)
