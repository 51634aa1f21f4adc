"""Anisotropic total variation (the Inverting Gradients definition)."""

from __future__ import annotations

from torch import Tensor, nn

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
    """
    if x.ndim < 2 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"total_variation needs images of shape (*, H, W) with H, W >= 2; got {tuple(x.shape)}")
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return horizontal + vertical


class TotalVariation(nn.Module):
    """Module form of :func:`total_variation`: ``(*, H, W) -> ()``."""

    def forward(self, x: Tensor) -> Tensor:
        return total_variation(x)
