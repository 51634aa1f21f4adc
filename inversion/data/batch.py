"""A client's private batch: indices drawn by a sampler, images loaded and normalised."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .samplers import sample_indices
from .image_source import ImageSource

__all__ = ["Batch", "sample_batch"]


@dataclass
class Batch:
    """A sampled client batch.

    Attributes:
        images: normalised images, shape (K, C, H, W), float32.
        labels: class indices, shape (K,), int64.
        indices: positions of the images in the source, shape (K,).
        replacement: whether an image may appear more than once.
        source: one-line description of where the images came from.
    """

    images: Tensor
    labels: Tensor
    indices: np.ndarray
    replacement: bool
    source: str


def sample_batch(
    source: ImageSource,
    batch_size: int,
    sampler: str = "random",
    *,
    seed: int = 0,
    counts: Mapping[int, int] | None = None,
    classes: int | None = None,
    target_class: int | None = None,
    replacement: bool = False,
) -> Batch:
    """Draw a client batch from a source (see :func:`inversion.data.samplers.sample_indices`).

    The same ``seed`` gives the same batch.
    """
    rng = np.random.default_rng(seed)
    indices = sample_indices(
        source.targets, source.spec.num_classes, batch_size, sampler, rng=rng,
        counts=counts, classes=classes, target_class=target_class, replacement=replacement,
    )
    images = source.spec.normalize(source.images(indices))
    labels = torch.as_tensor(source.targets[indices], dtype=torch.int64)
    return Batch(images, labels, indices, replacement, source.description)
