"""LeNet-5 (as in the iLRG code) and the LeNet of Zhu et al. 2019 (DLG)."""

from __future__ import annotations

from torch import nn

from inversion.models.activations import make_activation
from inversion.models.base import output_size

__all__ = ["lenet5_features", "lenet_zhu_features", "uniform_init_"]


def lenet5_features(
    name: str, in_channels: int, image_size: tuple[int, int], activation: str
) -> tuple[nn.Sequential, int]:
    r"""Features of LeNet-5: two conv-act-maxpool stages, flatten, Linear(flat, 120), Linear(120, 84).

    ``flat`` is 256 at 28x28 and 400 at 32x32; the smallest input is 16x16.

    Args:
        name: model name for error messages.
        in_channels: :math:`C`.
        image_size: :math:`(H, W)`.
        activation: name of the nonlinearity after every conv and hidden linear layer.

    Returns:
        ``features`` mapping :math:`(B, C, H, W)` to :math:`(B, 84)`, and 84.
    """
    trunk = nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5),
        make_activation(activation),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(6, 16, kernel_size=5),
        make_activation(activation),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
    )
    flat = output_size(trunk, in_channels, image_size, name)
    features = nn.Sequential(
        *trunk,
        nn.Linear(flat, 120),
        make_activation(activation),
        nn.Linear(120, 84),
        make_activation(activation),
    )
    return features, 84


def lenet_zhu_features(
    name: str, in_channels: int, image_size: tuple[int, int], activation: str
) -> tuple[nn.Sequential, int]:
    r"""Features of the DLG LeNet: three 5x5 convs with 12 channels (strides 2, 2, 1), flatten.

    The embedding is ``12 * ceil(H / 4) * ceil(W / 4)``: 768 at 32x32, 588 at 28x28.
    DLG initialises the whole model, final layer included, with :func:`uniform_init_`.

    Args:
        name: model name for error messages.
        in_channels: :math:`C`.
        image_size: :math:`(H, W)`.
        activation: name of the nonlinearity after every conv (DLG uses sigmoid).

    Returns:
        ``features`` mapping :math:`(B, C, H, W)` to :math:`(B, M)`, and :math:`M`.
    """
    features = nn.Sequential(
        nn.Conv2d(in_channels, 12, kernel_size=5, padding=2, stride=2),
        make_activation(activation),
        nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2),
        make_activation(activation),
        nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1),
        make_activation(activation),
        nn.Flatten(),
    )
    return features, output_size(features, in_channels, image_size, name)


def uniform_init_(module: nn.Module) -> None:
    """In place, as in DLG: every weight and bias of ``module`` drawn from :math:`U(-0.5, 0.5)`."""
    for m in module.modules():
        for tensor in (getattr(m, "weight", None), getattr(m, "bias", None)):
            if isinstance(tensor, nn.Parameter):
                nn.init.uniform_(tensor, -0.5, 0.5)
