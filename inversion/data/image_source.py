"""The ImageSource type: a dataset's labels plus access to its images by index."""

from __future__ import annotations

import numpy as np
import torch

from inversion.data.specs import DatasetSpec
from inversion.utils.errors import InputError

__all__ = ["ArraySource", "ImageSource", "SubsetSource"]


class ImageSource:
    """Images of one dataset with their class labels.

    ``spec`` describes the images, ``targets`` is int64 (N,) with the class of every
    image, ``description`` says in one line where the images come from. Subclasses
    provide ``_pixels``.
    """

    def __init__(self, spec: DatasetSpec, targets: np.ndarray, description: str) -> None:
        self.spec = spec
        self.targets = np.asarray(targets, dtype=np.int64)
        self.description = description

    def __len__(self) -> int:
        return len(self.targets)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"

    def images(self, indices) -> torch.Tensor:
        """Float32 (len(indices), C, H, W) in [0, 1] (not normalised), in the order given;
        ``indices`` is any 1-D sequence of ints (duplicates allowed)."""
        index = np.asarray(indices, dtype=np.int64)
        if index.ndim != 1:
            raise InputError(f"indices must be 1-D, got shape {index.shape}")
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"indices must lie in 0..{len(self) - 1}, got {index.min()}..{index.max()}")
        pixels = self._pixels(index)  # (n, H, W, C) uint8
        chw = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
        return torch.from_numpy(chw).to(torch.float32).div_(255)

    def _pixels(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (len(indices), H, W, C) pixels of the given valid indices."""
        raise NotImplementedError

    def original_indices(self, indices) -> np.ndarray:
        """Positions of ``indices`` in the underlying dataset (the same, except for a :class:`SubsetSource`)."""
        return np.asarray(indices, dtype=np.int64)


class ArraySource(ImageSource):
    """An ImageSource over in-memory arrays: images uint8 (N, H, W, C), labels int64 (N,)."""

    def __init__(self, spec: DatasetSpec, images: np.ndarray, labels: np.ndarray, description: str) -> None:
        shape = (*spec.image_size, spec.channels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
            raise InputError(
                f"{spec.name}: expected uint8 images (N, {', '.join(map(str, shape))}), "
                f"got {images.dtype} {images.shape}"
            )
        if len(labels) != len(images):
            raise InputError(f"{spec.name}: {len(images)} images but {len(labels)} labels")
        super().__init__(spec, labels, description)
        self._images = images

    def _pixels(self, indices: np.ndarray) -> np.ndarray:
        return self._images[indices]


class SubsetSource(ImageSource):
    """The images at ``positions`` of another source (e.g. those a model was trained on), numbered 0..n-1."""

    def __init__(self, source: ImageSource, positions, what: str) -> None:
        self.parent = source
        self.positions = np.asarray(positions, dtype=np.int64)
        if self.positions.ndim != 1 or not self.positions.size:
            raise InputError(f"a subset of {source.description} needs a non-empty 1-D list of positions")
        if self.positions.min() < 0 or self.positions.max() >= len(source):
            raise InputError(f"subset positions must lie in 0..{len(source) - 1} of {source.description}")
        super().__init__(source.spec, source.targets[self.positions], f"{source.description}; {what}")

    def _pixels(self, indices: np.ndarray) -> np.ndarray:
        return self.parent._pixels(self.positions[indices])

    def original_indices(self, indices) -> np.ndarray:
        return self.parent.original_indices(self.positions[np.asarray(indices, dtype=np.int64)])
