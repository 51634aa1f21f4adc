"""Fixed properties of the supported datasets: classes, image shape, normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from inversion.utils.errors import InputError

__all__ = ["DATASET_NAMES", "SPECS", "DatasetSpec"]


@dataclass(frozen=True)
class DatasetSpec:
    """What a model needs to know about a dataset's images and labels.

    ``image_size`` is (H, W); ``mean`` and ``std`` have one entry per channel and
    apply to images scaled to [0, 1].
    """

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, images: Tensor) -> Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, C, H, W) ``(images - mean) / std``."""
        mean, std = self._stats(images)
        return (images - mean) / std

    def denormalize(self, images: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: (B, C, H, W) normalised -> (B, C, H, W) in [0, 1] scale."""
        mean, std = self._stats(images)
        return images * std + mean

    def _stats(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std as (C, 1, 1) tensors on the images' device and dtype."""
        if images.dim() < 3 or images.shape[-3] != self.channels:
            raise InputError(
                f"{self.name}: expected images of shape (B, {self.channels}, H, W), got {tuple(images.shape)}"
            )
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
        return mean, std


DATASET_NAMES = ("mnist", "cifar100", "cifar10", "folder")

SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", 10, 1, (28, 28), (0.1307,), (0.3081,)),
    "cifar100": DatasetSpec("cifar100", 100, 3, (32, 32), (0.5071, 0.4867, 0.4412), (0.2673, 0.2564, 0.2762)),
    "cifar10": DatasetSpec("cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
