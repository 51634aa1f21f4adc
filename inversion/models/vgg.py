"""VGG-11/13/16/19 with BatchNorm (as in the iLRG code)."""

from __future__ import annotations

from torch import nn

from inversion.models.activations import make_activation
from inversion.models.base import conv_bn_act, output_size

__all__ = ["VGG_STAGE_DEPTHS", "vgg_features"]

VGG_STAGE_DEPTHS: dict[str, tuple[int, ...]] = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
"""Conv-BN-act blocks per stage; the stages have 64, 128, 256, 512, 512 channels."""

_STAGE_CHANNELS = (64, 128, 256, 512, 512)
_HIDDEN = 4096


def vgg_features(
    name: str, in_channels: int, image_size: tuple[int, int], activation: str, *, dropout: bool
) -> tuple[nn.Sequential, int]:
    r"""Features of a VGG: five stages of conv3x3-BN-act blocks each ending in MaxPool2d(2, 2),
    flatten, then Linear(flat, 4096)-act-[Dropout]-Linear(4096, 4096)-act-[Dropout].

    ``flat`` is 512 at 32x32 and 25088 at 224x224; the smallest input is 32x32.

    Args:
        name: one of :data:`VGG_STAGE_DEPTHS`.
        in_channels: :math:`C`.
        image_size: :math:`(H, W)`.
        activation: name of the nonlinearity in every block and after each hidden linear layer.
        dropout: whether to put Dropout(0.5) after each hidden linear layer.

    Returns:
        ``features`` mapping :math:`(B, C, H, W)` to :math:`(B, 4096)`, and 4096.
    """
    layers: list[nn.Module] = []
    c_in = in_channels
    for c_out, blocks in zip(_STAGE_CHANNELS, VGG_STAGE_DEPTHS[name]):
        for _ in range(blocks):
            layers.append(conv_bn_act(c_in, c_out, activation))
            c_in = c_out
        layers.append(nn.MaxPool2d(2, 2))
    trunk = nn.Sequential(*layers, nn.Flatten())
    flat = output_size(trunk, in_channels, image_size, name)
    head: list[nn.Module] = []
    for fan_in in (flat, _HIDDEN):
        head += [nn.Linear(fan_in, _HIDDEN), make_activation(activation)]
        if dropout:
            head.append(nn.Dropout(0.5))
    return nn.Sequential(*trunk, *head), _HIDDEN
