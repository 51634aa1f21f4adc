"""CIFAR-style ResNets (as in Inverting Gradients and the iLRG code): 3x3 stem, no max-pool."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from inversion.models.activations import make_activation
from inversion.models.base import conv_bn_act, output_size

__all__ = ["RESNET_LAYOUTS", "BasicBlock", "Bottleneck", "resnet_features"]


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Bias-free convolution (``padding = kernel_size // 2``) followed by BatchNorm2d."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity, or conv1x1 + BN when the block changes resolution or channels."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return _conv_bn(in_channels, out_channels, 1, stride)


class BasicBlock(nn.Module):
    r"""Two conv3x3-BN layers with a residual connection (torchvision's BasicBlock).

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`
        - Output: :math:`(B, \text{planes}, \lceil H / s \rceil, \lceil W / s \rceil)`
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, activation: str) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            conv_bn_act(in_channels, planes, activation, stride=stride, bias=False),
            _conv_bn(planes, planes, 3),
        )
        self.shortcut = _shortcut(in_channels, planes, stride)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    r"""conv1x1-conv3x3-conv1x1 bottleneck, stride on the 3x3 (torchvision's Bottleneck, ResNet v1.5).

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`
        - Output: :math:`(B, 4 \cdot \text{planes}, \lceil H / s \rceil, \lceil W / s \rceil)`
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, activation: str) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.residual = nn.Sequential(
            conv_bn_act(in_channels, planes, activation, kernel_size=1, bias=False),
            conv_bn_act(planes, planes, activation, stride=stride, bias=False),
            _conv_bn(planes, out_channels, 1),
        )
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.act = make_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.residual(x) + self.shortcut(x))


RESNET_LAYOUTS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}
"""Block type and blocks per stage of each ResNet."""

_STRIDES = (1, 2, 2, 2)


def resnet_features(
    name: str, in_channels: int, image_size: tuple[int, int], activation: str, *, width: int
) -> tuple[nn.Sequential, int]:
    r"""Features of a CIFAR-style ResNet: conv3x3-BN-act stem (no max-pool), four stages with
    ``width, 2 width, 4 width, 8 width`` planes and strides 1, 2, 2, 2, global average pool, flatten.

    The embedding is ``8 * width * expansion`` (512 for resnet18/34, 2048 for resnet50+ at
    ``width=64``) for any input size, 224x224 included.

    Args:
        name: one of :data:`RESNET_LAYOUTS`.
        in_channels: :math:`C`.
        image_size: :math:`(H, W)`.
        activation: name of every nonlinearity.
        width: planes of the first stage (and stem channels).

    Returns:
        ``features`` mapping :math:`(B, C, H, W)` to :math:`(B, M)`, and :math:`M`.
    """
    block, counts = RESNET_LAYOUTS[name]
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=conv_bn_act(in_channels, width, activation, bias=False))
    c_in = width
    for index, (count, stride) in enumerate(zip(counts, _STRIDES)):
        planes = width * 2**index
        blocks = []
        for s in (stride,) + (1,) * (count - 1):
            blocks.append(block(c_in, planes, s, activation))
            c_in = planes * block.expansion
        stages[f"layer{index + 1}"] = nn.Sequential(*blocks)
    stages["pool"] = nn.AdaptiveAvgPool2d(1)
    stages["flatten"] = nn.Flatten()
    features = nn.Sequential(stages)
    return features, output_size(features, in_channels, image_size, name)
