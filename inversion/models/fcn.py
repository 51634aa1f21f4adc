"""Fully connected network (the iLRG paper's FCN-d on MNIST)."""

from __future__ import annotations

from torch import nn

from inversion.models.activations import make_activation
from inversion.models.base import output_size
from inversion.utils.errors import InputError

__all__ = ["fcn_features"]


def fcn_features(
    name: str, in_channels: int, image_size: tuple[int, int], activation: str, *, width: int, depth: int
) -> tuple[nn.Sequential, int]:
    r"""Features of FCN-``depth``: flatten, then ``depth - 1`` hidden linear layers of ``width`` units.

    With the final layer this gives ``depth`` linear layers; the defaults (3, 300) on
    MNIST give the paper's FCN-3, 784-300-300-10. Default torch initialisation.

    Args:
        name: model name for error messages.
        in_channels: :math:`C`.
        image_size: :math:`(H, W)`.
        activation: name of the nonlinearity after every hidden layer.
        width: hidden units per layer.
        depth: number of linear layers including the final one, at least 2.

    Returns:
        ``features`` mapping :math:`(B, C, H, W)` to :math:`(B, \text{width})`, and ``width``.

    Raises:
        ValueError: if ``depth < 2``.
    """
    if depth < 2:
        raise InputError(f"{name} needs depth >= 2 (one hidden layer and the final layer), got {depth}")
    flatten = nn.Flatten()
    layers: list[nn.Module] = [flatten]
    fan_in = output_size(flatten, in_channels, image_size, name)
    for _ in range(depth - 1):
        layers += [nn.Linear(fan_in, width), make_activation(activation)]
        fan_in = width
    return nn.Sequential(*layers), width
