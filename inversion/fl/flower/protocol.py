"""This project's FedSGD federation: its declared protocol, the captured files' layout, the task and client
settings, the clients' partitions and batches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from inversion.data import sample_indices
from inversion.fl.dp import DPSGD, noise_seed
from inversion.fl.flower.capture import FederationProtocol
from inversion.models import ClassifierModel, build_model
from inversion.utils.errors import InputError

LAYOUT = """\
captured/round_RRR/global_model.pt  the global model state w the server sent in round RRR (state_dict)
captured/round_RRR/client_P.pt      SharedUpdate: the gradient the server recovered from client P's reply
private/round_RRR/client_P.pt       PrivateBatch: client P's batch in round RRR (simulation only; for scoring)"""


def round_dir(root: str | Path, server_round: int) -> Path:
    """``root/round_RRR``: the folder of one round's files."""
    return Path(root) / f"round_{int(server_round):03d}"


def update_path(root: str | Path, server_round: int, partition_id: int) -> Path:
    """``root/round_RRR/client_P.pt``: the file of client ``P``'s update (or private batch) in a round."""
    return round_dir(root, server_round) / f"client_{int(partition_id)}.pt"


@dataclass(frozen=True)
class TaskInfo:
    """The public task both sides agree on: the architecture and how inputs are normalised.

    Attributes:
        model: ``build_model`` arguments of the shared architecture (no ``weights`` entry).
        dataset: the dataset name (e.g. ``"mnist"``).
        input_shape: (C, H, W) of one input.
        mean, std: per-channel normalisation of [0, 1] images.
    """

    model: dict[str, Any]
    dataset: str
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def build(self, state: Mapping[str, Tensor] | None = None) -> ClassifierModel:
        """The architecture, holding ``state`` (a state_dict, cast to the model's dtypes) if given."""
        model = build_model(**self.model)
        if state is not None:
            model.load_state_dict(dict(state))
        return model

    def inputs(self) -> dict[str, Any]:
        """The public input facts every captured update records (:class:`CapturingStrategy`'s ``dataset``,
        ``input_shape``, ``mean`` and ``std``)."""
        return {"dataset": self.dataset, "input_shape": self.input_shape, "mean": self.mean, "std": self.std}


def fedsgd_protocol(lr: float, bn_mode: str) -> FederationProtocol:
    """The declared protocol of this federation: FedSGD, one plain SGD step at η = ``lr`` on the whole batch, in
    batch-norm mode ``bn_mode`` (both also sent in the train config, for the clients)."""
    return FederationProtocol("fedsgd", lr=float(lr), bn_mode=str(bn_mode))


@dataclass(frozen=True)
class ClientSettings:
    """What the simulated clients know that the server does not: their data and how they sample it.

    Reaches the clients inside the :class:`ClientApp` (pickled to the Ray actors by the simulation
    engine), never through a Flower message, so the server cannot read it.

    Attributes:
        task: the public :class:`TaskInfo`.
        data: :func:`~inversion.data.load_source` keyword arguments (absolute ``root``; ``download`` off).
        num_items: the number of images the source must hold (checked: partitions depend on it).
        batch_size: K.
        sampler: a :data:`~inversion.data.SAMPLER_NAMES` name, drawn within the client's partition,
            with ``counts``, ``classes``, ``target_class`` and ``replacement`` as in
            :func:`~inversion.data.sample_indices`.
        seed: the client batch seed; round r of partition p uses ``[seed, r, p]``.
        chunk_size: images per forward/backward pass (None: the whole batch).
        partition_seed: seed of the split of the source into disjoint partitions.
        private_dir: where each client writes its :class:`PrivateBatch` files (absolute), or None.
        record: further JSON facts stored in every private record (e.g. the experiment's config).
        dp: DP-SGD settings (σ, C, δ): every client shares its privatized gradient; None: no DP-SGD.
        dp_noise_seed: fixes the DP noise of every client and round (:func:`dp_noise_seed`); None: fresh
            OS entropy. The seed used is written only to the client's private file.
    """

    task: TaskInfo
    data: dict[str, Any]
    num_items: int
    batch_size: int
    sampler: str = "random"
    counts: dict[int, int] | None = None
    classes: int | None = None
    target_class: int | None = None
    replacement: bool = False
    seed: int = 0
    chunk_size: int | None = None
    partition_seed: int = 0
    private_dir: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    dp: DPSGD | None = None
    dp_noise_seed: int | None = None


def partition_indices(num_items: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Split ``range(num_items)`` into ``num_partitions`` disjoint random parts of near-equal size (IID).

    Raises:
        ValueError: fewer items than partitions.
    """
    if num_partitions < 1 or num_items < num_partitions:
        raise InputError(f"cannot split {num_items} images into {num_partitions} non-empty partitions")
    order = np.random.default_rng(seed).permutation(num_items)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_partitions)]


def draw_batch(
    targets: np.ndarray,
    partition: np.ndarray,
    settings: ClientSettings,
    num_classes: int,
    server_round: int,
    partition_id: int,
) -> np.ndarray:
    """Indices (into the source) of the client's batch in a round: K drawn from its partition by its sampler,
    seeded by ``[settings.seed, server_round, partition_id]``."""
    rng = np.random.default_rng([int(settings.seed), int(server_round), int(partition_id)])
    local = sample_indices(
        np.asarray(targets)[partition],
        num_classes,
        settings.batch_size,
        settings.sampler,
        rng=rng,
        counts=settings.counts,
        classes=settings.classes,
        target_class=settings.target_class,
        replacement=settings.replacement,
    )
    return partition[local]


def dp_noise_seed(settings: ClientSettings, server_round: int, partition_id: int) -> int:
    """The seed of the client's DP noise in a round: 63 fresh bits of OS entropy, or, when
    ``settings.dp_noise_seed`` fixes it (a reproducible experiment), one drawn from
    ``[dp_noise_seed, server_round, partition_id]``, so that no two clients or rounds share their noise."""
    if settings.dp_noise_seed is None:
        return noise_seed()
    rng = np.random.default_rng([int(settings.dp_noise_seed), int(server_round), int(partition_id)])
    return int(rng.integers(2**63))


def sgd_step(model: nn.Module, gradients: Mapping[str, Tensor], lr: float) -> dict[str, Tensor]:
    """The model's state after one SGD step: ``p - lr * g`` for every parameter with a gradient, in the
    parameter's dtype; buffers (e.g. batch-norm statistics) unchanged. The model itself is not modified."""
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    for name, grad in gradients.items():
        state[name] = state[name] - lr * grad.detach().to(state[name].dtype)
    return state


def single_record(records: Mapping[str, Any], what: str) -> Any:
    """The one record of a message's ``records`` (ValueError naming ``what`` if there are none or several)."""
    if len(records) != 1:
        raise InputError(f"expected exactly one {what} in the message, found {len(records)}")
    return next(iter(records.values()))
