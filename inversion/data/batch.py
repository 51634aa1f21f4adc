"""A client's private batch: indices drawn by a sampler, images loaded and normalised."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from inversion.data.image_source import ImageSource
from inversion.data.samplers import sample_indices, synthetic_counts
from inversion.utils.errors import InputError

__all__ = ["Batch", "check_fits_in_memory", "sample_batch", "sample_synthetic_batch"]


@dataclass
class Batch:
    """A sampled client batch.

    Attributes:
        images: normalised images, shape (K, C, H, W), float32.
        labels: class indices, shape (K,), int64.
        indices: positions of the images in the source, shape (K,).
        replacement: whether an image may appear more than once.
        source: one-line description of where the images came from.
        synthetic_labels: True when the labels were drawn independently of the images
            (:func:`sample_synthetic_batch`), False for the images' real labels.
    """

    images: Tensor
    labels: Tensor
    indices: np.ndarray
    replacement: bool
    source: str
    synthetic_labels: bool = False


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

    The same ``seed`` gives the same batch. Without replacement K is at most the number of
    images; with it, K may exceed that, but a K whose images cannot fit in this machine's
    memory is refused before anything is allocated.
    """
    if replacement:
        check_fits_in_memory(source, batch_size)
    rng = np.random.default_rng(seed)
    indices = sample_indices(
        source.targets,
        source.spec.num_classes,
        batch_size,
        sampler,
        rng=rng,
        counts=counts,
        classes=classes,
        target_class=target_class,
        replacement=replacement,
    )
    images = source.spec.normalize(source.images(indices))
    labels = torch.as_tensor(source.targets[indices], dtype=torch.int64)
    return Batch(images, labels, indices, replacement, source.description)


def sample_synthetic_batch(
    source: ImageSource,
    batch_size: int,
    num_classes: int,
    sampler: str = "random",
    *,
    seed: int = 0,
    counts: Mapping[int, int] | None = None,
    classes: int | None = None,
    target_class: int | None = None,
) -> Batch:
    """K distinct real images with labels drawn over ``num_classes`` classes, independent of the images.

    Only meaningful for **untrained** models, whose gradients do not depend on whether an
    image matches its label: it lets a label-distribution experiment over C classes (e.g.
    CIFAR-100's 100 or ImageNet's 1000) run on any source with enough distinct images,
    instead of faking a missing dataset with repeated images (duplicates make label
    restoration artificially exact). The labels follow
    :func:`~inversion.data.samplers.synthetic_counts` and are shuffled.

    Raises:
        ValueError: the source has fewer than K images, or bad sampler options.
    """
    if batch_size > len(source):
        raise InputError(
            f"synthetic labels need {batch_size} distinct images but the source has {len(source)}; "
            "use a larger source (e.g. a folder of images) or a smaller batch"
        )
    rng = np.random.default_rng(seed)
    label_counts = synthetic_counts(
        num_classes, batch_size, sampler, rng=rng, counts=counts, classes=classes, target_class=target_class
    )
    labels = rng.permutation(np.repeat(np.arange(num_classes), label_counts))
    indices = rng.choice(len(source), size=batch_size, replace=False).astype(np.int64)
    images = source.spec.normalize(source.images(indices))
    description = (
        f"{source.description}; labels: synthetic ({sampler} sampler over {num_classes} classes, "
        "independent of the images)"
    )
    return Batch(images, torch.as_tensor(labels, dtype=torch.int64), indices, False, description, True)


def check_fits_in_memory(source: ImageSource, batch_size: int) -> None:
    """ValueError if K float32 images of the source need more than this machine's physical memory."""
    channels, (height, width) = source.spec.channels, source.spec.image_size
    per_image = 4 * channels * height * width
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if batch_size * per_image > memory:
        raise InputError(
            f"batch size {batch_size:,} cannot fit: its {channels}x{height}x{width} float32 images need "
            f"{batch_size * per_image / 2**30:,.0f} GiB, more than this machine's {memory / 2**30:,.0f} GiB of "
            f"memory; the limit is {memory // per_image:,} images of this size (set a smaller client.batch_size)"
        )
