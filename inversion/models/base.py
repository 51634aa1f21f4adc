"""What every architecture is made of: the classifier contract and shared building blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from inversion.models.activations import make_activation
from inversion.utils.errors import InputError

__all__ = ["ClassifierModel", "conv_bn_act", "footprint", "forward_flops", "init_conv_bn_", "output_size"]

_MAX_SEARCHED_SIDE = 1024


class ClassifierModel(nn.Module):
    r"""An image classifier split into a feature extractor and one final linear layer.

    ``forward(x) = fc(features(x))``. The split is what gradient-leakage attacks need:
    the final layer's gradient carries the labels, and ``features`` gives the embedding
    that enters it.

    Args:
        features: maps images :math:`(B, C, H, W)` to embeddings :math:`(B, M)`;
            everything before the last linear layer, flattening included.
        embedding_dim: :math:`M`, the width of the embedding.
        num_classes: :math:`K`, the number of logits.
        final_bias: whether the final layer has a bias.
        config: the build arguments, JSON-serialisable; stored as ``self.config``.

    Shape:
        - Input: :math:`(B, C, H, W)`
        - Output: :math:`(B, K)` logits
    """

    def __init__(
        self, features: nn.Module, embedding_dim: int, num_classes: int, *, final_bias: bool, config: dict[str, Any]
    ) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Linear(embedding_dim, num_classes, bias=final_bias)
        self.config = dict(config)

    def forward(self, x: Tensor) -> Tensor:
        r"""Logits :math:`(B, K)` of images :math:`(B, C, H, W)`."""
        return self.fc(self.features(x))

    def embed(self, x: Tensor) -> Tensor:
        r"""Embedding :math:`(B, M)` entering the final layer, of images :math:`(B, C, H, W)`."""
        return self.features(x)


def conv_bn_act(
    in_channels: int, out_channels: int, activation: str, *, kernel_size: int = 3, stride: int = 1, bias: bool = True
) -> nn.Sequential:
    r"""Convolution (``padding = kernel_size // 2``), BatchNorm2d, activation.

    Shape:
        - Input: :math:`(B, C_{in}, H, W)`
        - Output: :math:`(B, C_{out}, \lceil H / s \rceil, \lceil W / s \rceil)` for odd kernel sizes
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias),
        nn.BatchNorm2d(out_channels),
        make_activation(activation),
    )


def init_conv_bn_(module: nn.Module) -> None:
    """In place: conv weights ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``, BatchNorm weight 1, bias 0.

    Conv biases and linear layers keep torch's default initialisation (as in the iLRG code).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _shape_pass(module: nn.Module, in_channels: int, image_size: tuple[int, int]) -> torch.Size:
    """Output shape of ``module`` in eval mode for one image, computed on the meta device (no arithmetic)."""
    state = {
        name: torch.empty_like(t, device="meta") for name, t in (*module.named_parameters(), *module.named_buffers())
    }
    image = torch.empty(1, in_channels, *image_size, device="meta")
    was_training = module.training
    module.eval()
    try:
        return functional_call(module, state, (image,)).shape
    finally:
        module.train(was_training)


_NOT_KEPT = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.modules.batchnorm._BatchNorm)
"""Leaf modules whose output autograd does not keep (in eval mode): views of their input, and batch norm
(it keeps its input, the layer before's output, and the activation after it keeps its own output)."""


def footprint(module: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """(P, A): the trainable parameters of ``module`` and the activation values of one input's forward pass.

    A sums the outputs of the leaf modules in one eval-mode forward of one input of shape ``input_shape``
    (C, H, W), but for views (``nn.Flatten``) and batch norm: about what autograd keeps for the backward pass.
    The forward runs on the meta device, so nothing is allocated and ``module`` may itself live there (e.g.
    built under ``with torch.device("meta")``); it costs about what building the model costs.
    """
    sizes: list[int] = []
    leaves = [m for m in module.modules() if next(m.children(), None) is None and not isinstance(m, _NOT_KEPT)]
    handles = [
        m.register_forward_hook(lambda _, __, out: sizes.append(out.numel()) if isinstance(out, Tensor) else None)
        for m in leaves
    ]
    try:
        _shape_pass(module, int(input_shape[0]), (int(input_shape[1]), int(input_shape[2])))
    finally:
        for handle in handles:
            handle.remove()
    return sum(p.numel() for p in module.parameters() if p.requires_grad), sum(sizes)


def forward_flops(module: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one eval-mode forward pass of one input of shape ``input_shape`` (C, H, W), as
    :class:`torch.utils.flop_counter.FlopCounterMode` counts them (matrix products and convolutions);
    run on the meta device like :func:`footprint`, so nothing is computed. A batch of K costs K times this."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _shape_pass(module, int(input_shape[0]), (int(input_shape[1]), int(input_shape[2])))
    return int(counter.get_total_flops())


def _flat_size(module: nn.Module, in_channels: int, image_size: tuple[int, int]) -> int | None:
    """Flattened per-image output size of ``module``, or None if the input is too small for it."""
    try:
        shape = _shape_pass(module, in_channels, image_size)
    except RuntimeError:  # e.g. "Kernel size can't be greater than actual input size"
        return None
    return shape[1:].numel() or None


def output_size(module: nn.Module, in_channels: int, image_size: tuple[int, int], model_name: str) -> int:
    r"""Flattened per-image output size of ``module``, found by one dummy forward.

    The dummy forward runs on the meta device, so it costs nothing even for
    CIFAR-style ResNets at 224x224, and it leaves parameters and BatchNorm
    statistics untouched.

    Args:
        module: maps :math:`(B, C, H, W)` to :math:`(B, *)`.
        in_channels: :math:`C`.
        image_size: :math:`(H, W)`.
        model_name: used in the error message.

    Returns:
        The number of features per image.

    Raises:
        ValueError: if the input is too small for the architecture; the message gives the
            smallest square input it accepts.
    """
    flat = _flat_size(module, in_channels, image_size)
    if flat is not None:
        return flat
    sides = range(1, _MAX_SEARCHED_SIDE + 1)
    side = next((s for s in sides if _flat_size(module, in_channels, (s, s)) is not None), None)
    minimum = f"; the smallest square input it accepts is {side}x{side}" if side is not None else ""
    raise InputError(f"input size {image_size[0]}x{image_size[1]} is too small for {model_name}{minimum}")
