"""The server's labelled auxiliary data, and the statistics the ``aux`` label method reads from it.

``aux`` (:mod:`label_restore.aux`) assumes a stronger server than iLRG: one that owns a few thousand labelled
images from the clients' distribution (a public split, never the client's batch). This module draws that set
(:func:`draw_auxiliary`), evaluates the model on it (:func:`softmax_outputs`) and, for a FedAvg update,
simulates the client's local training on it (:func:`trajectory_softmax`, RLU's idea): the pseudo-gradient is the
mean of the S local gradients, so the class means of the softmax must be taken along the local trajectory.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from label_restore import RestorationResult, restore_labels

from .data import ImageSource
from .fl.local import LocalTraining
from .fl.update import SharedUpdate

__all__ = ["AuxiliaryData", "draw_auxiliary", "softmax_outputs", "trajectory_softmax", "aux_restoration"]

#: Images per forward pass over the auxiliary set.
CHUNK = 1024

#: At most this many simulated FedAvg clients per restoration, and the change of the float counts (in samples)
#: below which the iteration stops.
MAX_PASSES = 30
TOLERANCE = 1e-3


@dataclass(frozen=True)
class AuxiliaryData:
    """Labelled images the server owns.

    Attributes:
        images: (N, C, H, W) float32, normalised like the clients' inputs.
        labels: (N,) int64.
        record: how they were drawn (source, size, seed, how many images were excluded), for the results.
    """

    images: Tensor
    labels: Tensor
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.shape != (self.images.shape[0],) or self.images.shape[0] < 1:
            raise ValueError(f"auxiliary data needs images (N, C, H, W) and labels (N,) with N >= 1; got "
                             f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def draw_auxiliary(source: ImageSource, size: int, seed: int, exclude: Sequence[int] = ()) -> AuxiliaryData:
    """``size`` images of ``source`` drawn at random (seeded), none of those at positions ``exclude``.

    Args:
        source: the images the server may use (e.g. the clients' distribution, a public split).
        size: N; if fewer images remain after ``exclude``, all of them are used (the record says so).
        seed: the draw's seed.
        exclude: positions in ``source`` that must not be drawn (the client's batch: the simulation's guarantee
            that the auxiliary set is disjoint from it).

    Raises:
        ValueError: ``size`` < 1, or nothing is left after ``exclude``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"the auxiliary set size must be a positive integer, got {size!r}")
    excluded = np.unique(np.asarray(exclude, dtype=np.int64))
    pool = np.setdiff1d(np.arange(len(source), dtype=np.int64), excluded)
    if not pool.size:
        raise ValueError(f"no auxiliary images are left: all {len(source)} images of {source.description} "
                         "are the client's")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool, size=size, replace=False)) if size < pool.size else pool
    images = source.spec.normalize(source.images(chosen))
    labels = torch.as_tensor(source.targets[chosen], dtype=torch.int64)
    record = {"source": source.description, "requested": size, "size": int(chosen.size), "seed": seed,
              "excluded": int(excluded.size), "classes": int(np.unique(source.targets[chosen]).size)}
    return AuxiliaryData(images, labels, record)


@torch.no_grad()
def softmax_outputs(model: nn.Module, images: Tensor) -> Tensor:
    """The model's softmax outputs in eval mode, (N, C) float32 on the CPU (chunks of :data:`CHUNK` images)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return torch.cat([torch.softmax(model(images[i:i + CHUNK].to(device)).float(), dim=1).cpu()
                          for i in range(0, images.shape[0], CHUNK)])
    finally:
        model.train(was_training)


def trajectory_softmax(model: nn.Module, aux: AuxiliaryData, local: LocalTraining, counts: Any,
                       bn_mode: str = "eval") -> Tensor:
    """The auxiliary softmax outputs along a simulated FedAvg client's local trajectory, (S, N, C).

    The simulated client has the class counts ``counts`` (floats allowed) and runs the public schedule's S steps
    at rate η from the shared model, each on the *expected* loss of such a batch: the cross-entropy of every
    auxiliary image, weighted so that class :math:`j` carries :math:`n_j / K` of the loss, split evenly among its
    auxiliary images. (The real client's mini-batches of B samples scatter around that path; a DP-SGD client's
    clipping and noise are not simulated.) Row ``s`` is the softmax of the N auxiliary images at
    :math:`\\theta_s`, the weights at which the client took its step ``s``.

    Args:
        model: the shared model :math:`\\theta_0` (not changed).
        aux: the auxiliary data (every class with a positive count needs an image; others are ignored).
        local: the client's public schedule (its S and η).
        counts: (C,) class counts of the simulated client, non-negative, not all zero.
        bn_mode: the client's batch-norm mode during its local steps (``update.meta.bn_mode``).
    """
    counts = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    per_class = torch.bincount(aux.labels, minlength=counts.numel()).to(torch.float64)
    weights = (counts / counts.sum() / per_class.clamp(min=1))[aux.labels]
    client = copy.deepcopy(model).train(bn_mode == "train")
    device = next(client.parameters()).device
    optimizer = torch.optim.SGD([p for p in client.parameters() if p.requires_grad], lr=local.lr)
    outputs = []
    for _ in range(local.steps):
        optimizer.zero_grad()
        logits = torch.cat([client(aux.images[i:i + CHUNK].to(device)) for i in range(0, len(aux), CHUNK)])
        outputs.append(torch.softmax(logits.detach().float(), dim=1).cpu())
        losses = F.cross_entropy(logits, aux.labels.to(device), reduction="none")
        (weights.to(device=device, dtype=losses.dtype) * losses).sum().backward()
        optimizer.step()
    return torch.stack(outputs)


def aux_restoration(update: SharedUpdate, model: nn.Module, aux: AuxiliaryData, batch_size: int, *,
                    missing_classes: str = "error", max_passes: int = MAX_PASSES) -> RestorationResult:
    """The ``aux`` method on a shared update, with the auxiliary statistics it needs.

    FedSGD: one restoration with the model's softmax outputs on ``aux``. FedAvg: that restoration gives first
    (float) counts; then a client with the current counts is simulated through the update's public schedule
    (:func:`trajectory_softmax`) and the counts are restored again with the class means along that trajectory
    and the update's pseudo-gradient :math:`-\\Delta/(\\eta S)`, until no float count moves by more than
    :data:`TOLERANCE` (a fixed point; at most ``max_passes`` simulations, fewer the smaller η).

    Returns:
        the restoration, with ``details["aux"]`` = ``aux.record``, ``details["server_seconds"]`` (forward passes
        and simulation included) and, for FedAvg, ``details["first_pass_counts"]``, ``details["simulated_steps"]``
        ``details["simulations"]`` (how many were run) and ``details["last_change"]`` (the largest change of a
        float count in the last one: above :data:`TOLERANCE` when the iteration did not settle).
    """
    start = time.perf_counter()
    _, grad_bias = update.final_layer_gradients(model)
    options = {"grad_bias": grad_bias, "batch_size": batch_size, "aux_labels": aux.labels,
               "missing_classes": missing_classes}
    result = restore_labels("aux", aux_probs=softmax_outputs(model, aux.images), **options)
    extra: dict[str, Any] = {"aux": aux.record}
    if update.kind == "fedavg":
        local = update.meta.local
        extra.update(first_pass_counts={str(c): int(n) for c, n in enumerate(result.counts) if n},
                     simulated_steps=local.steps, simulations=0)
        for _ in range(max_passes):
            trajectory = trajectory_softmax(model, aux, local, result.details["float_counts"], update.meta.bn_mode)
            previous, result = result.details["float_counts"], restore_labels("aux", aux_probs=trajectory, **options)
            extra["simulations"] += 1
            extra["last_change"] = float(np.abs(result.details["float_counts"] - previous).max())
            if extra["last_change"] <= TOLERANCE:
                break
    extra["server_seconds"] = time.perf_counter() - start
    return dataclasses.replace(result, details={**result.details, **extra})
