"""The ConvNet of Geiping et al. 2020, "Inverting Gradients"."""

from __future__ import annotations

from itertools import pairwise

from torch import nn

from inversion.models.base import conv_bn_act, output_size

__all__ = ["convnet_features"]


def convnet_features(
    name: str, in_channels: int, image_size: tuple[int, int], activation: str, *, width: int
) -> tuple[nn.Sequential, int]:
    r"""Features of ConvNet-``width``: eight conv3x3-BN-act blocks, MaxPool2d(3) after the 6th and 8th.

    Channels :math:`C \to w \to 2w \to 2w \to 4w \to 4w \to 4w`, pool, :math:`\to 4w \to 4w`,
    pool, flatten. The embedding is :math:`36w` at 32x32; the smallest input is 9x9.
    Default torch initialisation (as in Inverting Gradients).

    Args:
        name: model name for error messages.
        in_channels: :math:`C`.
        image_size: :math:`(H, W)`.
        activation: name of the nonlinearity in every block.
        width: :math:`w`.

    Returns:
        ``features`` mapping :math:`(B, C, H, W)` to :math:`(B, M)`, and :math:`M`.
    """
    w = width
    widths = (in_channels, w, 2 * w, 2 * w, 4 * w, 4 * w, 4 * w)
    features = nn.Sequential(
        *(conv_bn_act(c_in, c_out, activation) for c_in, c_out in pairwise(widths)),
        nn.MaxPool2d(3),
        conv_bn_act(4 * w, 4 * w, activation),
        conv_bn_act(4 * w, 4 * w, activation),
        nn.MaxPool2d(3),
        nn.Flatten(),
    )
    return features, output_size(features, in_channels, image_size, name)
