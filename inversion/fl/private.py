"""What only the client knows: :class:`PrivateBatch`, kept apart from the update and used only to score."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inversion.fl._records import load_record, save_record
from inversion.fl.update import SharedUpdate
from inversion.utils.errors import InputError

__all__ = ["PrivateBatch"]

FORMAT = "gradleak.PrivateBatch"
VERSION = 1


@dataclass
class PrivateBatch:
    """The client's private batch: the ground truth an attack is scored against, never given to it.

    Attributes:
        images: normalised inputs, (K, C, H, W).
        labels: class indices, (K,), int64.
        record: JSON-serialisable record of how the batch was drawn (data source, sampler, seeds,
            indices, the experiment's config) and, under DP-SGD, ``dp_noise_seed``: the seed of the
            noise actually used (the client's secret: never in the update).
        update_sha256: :attr:`SharedUpdate.sha256` of the update computed from this batch, so that a
            private file is never scored against another update; None if not tied to one (such a batch
            is never scored: :meth:`check_link`).
    """

    images: Tensor
    labels: Tensor
    record: dict[str, Any] = field(default_factory=dict)
    update_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.ndim != 1 or self.images.shape[0] != self.labels.shape[0]:
            raise InputError(
                f"images (K, C, H, W) and labels (K,) must agree; got {tuple(self.images.shape)} "
                f"and {tuple(self.labels.shape)}"
            )
        try:
            json.dumps(self.record)
        except TypeError as err:
            raise InputError(f"record must be JSON-serialisable: {err}") from None

    def counts(self, num_classes: int) -> Tensor:
        """True class counts, (C,) int64."""
        return torch.bincount(self.labels, minlength=num_classes)

    def check_link(self, update_sha256: str) -> None:
        """Raise ValueError unless this batch is tied to the update whose :attr:`SharedUpdate.sha256` is given
        (a batch tied to no update is refused too: nothing says which update it belongs to)."""
        if not self.update_sha256:
            raise InputError(
                "the private batch is tied to no update (its update_sha256 is empty): score an update "
                "only against the private file written with it"
            )
        if self.update_sha256 != update_sha256:
            raise InputError(
                f"the private batch belongs to another update (update sha256 {self.update_sha256[:12]}, this update "
                f"{update_sha256[:12]}): score an update only against the private file written with it"
            )

    def check_matches(self, update: SharedUpdate) -> None:
        """Raise ValueError unless this batch is the one ``update`` was computed from (by digest and shape)."""
        self.check_link(update.sha256)
        if update.batch_size is not None and update.batch_size != self.labels.shape[0]:
            raise InputError(
                f"the private batch has {self.labels.shape[0]} images but the update says K={update.batch_size}"
            )
        shape = update.meta.input_shape
        if shape is not None and tuple(self.images.shape[1:]) != tuple(shape):
            raise InputError(f"private images are {tuple(self.images.shape[1:])}, the update's inputs {tuple(shape)}")

    def save(self, path: str | Path) -> Path:
        """Save atomically with a sha256 of the content (tensors and plain data only)."""
        header = {"record": self.record, "update_sha256": self.update_sha256}
        return save_record(path, FORMAT, VERSION, header, {"images": self.images, "labels": self.labels})

    @classmethod
    def load(cls, path: str | Path) -> PrivateBatch:
        """Load a saved private batch (no unpickling of code; the checksum is verified).

        Raises:
            FileNotFoundError, ValueError: as :meth:`SharedUpdate.load`.
        """
        header, tensors = load_record(path, FORMAT, VERSION, "private-batch")
        try:
            return cls(tensors["images"], tensors["labels"].long(), header["record"], header["update_sha256"])
        except KeyError as err:
            raise InputError(
                f"{path} holds an invalid private batch: it has no {err.args[0]!r} entry; write it "
                "with PrivateBatch.save (or scripts/share_update.py)"
            ) from None
        except (TypeError, ValueError, AttributeError) as err:
            raise InputError(f"{path} holds an invalid private batch: {err}") from None
