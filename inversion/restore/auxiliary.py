"""The server's labelled auxiliary data, and the statistics the label methods that need it read from it.

Such methods (``needs="auxiliary"`` in :func:`label_restore.register_method`; built in: ``aux``,
:mod:`label_restore.aux`) assume a stronger server than iLRG: one that owns a few thousand labelled
images from the clients' distribution (a public split, never the client's batch). This module draws that set
(:func:`draw_auxiliary`), evaluates the model on it (:func:`softmax_outputs`) and, for a FedAvg update,
simulates the client's local training on it (:func:`simulated_client_softmax`, RLU's idea): the pseudo-gradient
is the mean of the S local gradients, so the class means of the softmax must be taken along the local trajectory
(:func:`aux_restoration`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inversion.data import DatasetSpec, ImageSource
from inversion.fl.local import LocalTraining
from inversion.fl.update import SharedUpdate
from inversion.models import final_layer
from inversion.utils.errors import InputError
from label_restore import RestorationResult, restore_labels
from label_restore.aux import class_conditional_probabilities
from label_restore.result import make_result

__all__ = ["AuxiliaryData", "aux_restoration", "draw_auxiliary", "simulated_client_softmax", "softmax_outputs"]

#: Images per forward pass over the auxiliary set.
CHUNK = 1024

#: FedAvg: at most this many rounds of simulation per restoration (until the counts repeat), the simulated
#: clients pooled per round, and the auxiliary images per absent class evaluated along their trajectories.
MAX_PASSES = 5
REPEATS = 8
PROBES = 32

#: FedAvg local search: the classes tried as the source and as the target of a moved sample.
MOVES = 3


@dataclass(frozen=True)
class AuxiliaryData:
    """Labelled images the server owns.

    Attributes:
        images: (N, C, H, W) float32, normalised like the clients' inputs.
        labels: (N,) int64.
        record: how they were drawn (source, size, seed, how many images were excluded), for the results.
        spec: the dataset they come from (its classes and normalisation; the classes the labels are drawn
            over, for synthetic labels), or None when unknown; :meth:`check_fits` compares it with the update.
    """

    images: Tensor
    labels: Tensor
    record: dict[str, Any] = field(default_factory=dict)
    spec: DatasetSpec | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.labels.shape != (self.images.shape[0],) or self.images.shape[0] < 1:
            raise InputError(
                f"auxiliary data needs images (N, C, H, W) and labels (N,) with N >= 1; got "
                f"{tuple(self.images.shape)} and {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def check_fits(self, update: SharedUpdate, model: nn.Module) -> None:
        """Raise ValueError unless these images could come from the update's task: the same input shape and
        normalisation (where both sides know them) and no more classes than the model's. (Dataset names are not
        compared: the same images may come from a torchvision file and from an image ``folder``.)"""
        meta, spec, shape = update.meta, self.spec, tuple(self.images.shape[1:])
        fix = "draw the auxiliary set from the update's dataset"
        if meta.input_shape is not None and shape != meta.input_shape:
            raise InputError(
                f"the auxiliary images are {shape} (C, H, W) but the inputs of {update.display_name} "
                f"{meta.input_shape}: {fix}"
            )
        if (
            spec is not None
            and meta.mean is not None
            and meta.std is not None  # given with the mean (checked on creation)
            and not (_same(spec.mean, meta.mean) and _same(spec.std, meta.std))
        ):
            raise InputError(
                f"the auxiliary images are normalised with mean {spec.mean}, std {spec.std} but the "
                f"inputs of {update.display_name} with mean {meta.mean}, std {meta.std}: {fix}"
            )
        classes = final_layer(model).out_features
        if spec is not None and spec.num_classes > classes:
            raise InputError(
                f"the auxiliary set has {spec.num_classes} classes ({spec.name}) but the model {classes}: {fix}"
            )


def _same(values: Sequence[float], others: Sequence[float]) -> bool:
    """Whether two per-channel statistics agree (to float32 rounding, in case one went through a tensor)."""
    return len(values) == len(others) and np.allclose(values, others, rtol=1e-6, atol=0)


def draw_auxiliary(
    source: ImageSource, size: int, seed: int, exclude: Sequence[int] = (), synthetic_classes: int | None = None
) -> AuxiliaryData:
    """``size`` images of ``source`` drawn at random (seeded), none of those at positions ``exclude``.

    Args:
        source: the images the server may use (e.g. the clients' distribution, a public split).
        size: N; if fewer images remain after ``exclude``, all of them are used (the record says so).
        seed: the draw's seed.
        exclude: positions in ``source`` that must not be drawn (the client's batch: the simulation's guarantee
            that the auxiliary set is disjoint from it).
        synthetic_classes: for a client with synthetic labels (an untrained model, labels drawn over C classes
            independently of the images), C: the auxiliary labels are drawn the same way, uniformly.

    Raises:
        ValueError: ``size`` < 1, ``exclude`` holds a position that is not an integer in [0, len(source)), or
            nothing is left after ``exclude``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InputError(f"the auxiliary set size must be a positive integer, got {size!r}")
    positions = np.asarray(exclude)
    if positions.size and positions.dtype.kind not in "iu":
        raise InputError(f"exclude must hold integer positions in the source, got {positions.dtype} values")
    excluded = np.unique(positions.astype(np.int64))
    if excluded.size and (excluded[0] < 0 or excluded[-1] >= len(source)):
        raise InputError(
            f"exclude holds positions outside the {len(source)} images of {source.description} "
            f"(min {excluded[0]}, max {excluded[-1]}): give positions in this source (the client's "
            "batch must come from it)"
        )
    pool = np.setdiff1d(np.arange(len(source), dtype=np.int64), excluded)
    if not pool.size:
        raise InputError(
            f"no auxiliary images are left: all {len(source)} images of {source.description} are the client's"
        )
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(pool, size=size, replace=False)) if size < pool.size else pool
    images = source.spec.normalize(source.images(chosen))
    if synthetic_classes is None:
        drawn, kind = source.targets[chosen], "real"
    else:
        drawn, kind = rng.integers(0, synthetic_classes, chosen.size), f"synthetic (uniform over {synthetic_classes})"
    record = {
        "source": source.description,
        "requested": size,
        "size": int(chosen.size),
        "seed": seed,
        "excluded": int(excluded.size),
        "labels": kind,
        "classes": int(np.unique(drawn).size),
    }
    labels = torch.as_tensor(drawn, dtype=torch.int64)
    spec = source.spec if synthetic_classes is None else dataclasses.replace(source.spec, num_classes=synthetic_classes)
    return AuxiliaryData(images, labels, record, spec)


@torch.no_grad()
def softmax_outputs(model: nn.Module, images: Tensor) -> Tensor:
    """The model's softmax outputs in eval mode, (N, C) float32 on the CPU (chunks of :data:`CHUNK` images)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return torch.cat(
            [
                torch.softmax(model(images[i : i + CHUNK].to(device)).float(), dim=1).cpu()
                for i in range(0, images.shape[0], CHUNK)
            ]
        )
    finally:
        model.train(was_training)


class SimulatedRows(NamedTuple):
    """The softmax rows of simulated FedAvg clients (:func:`simulated_client_softmax`).

    Attributes:
        probs: (V, C) float32 softmax rows, one per visit of a sample (or probe) in a local step.
        labels: (V,) int64 their classes.
        weights: (V,) float64 how much each counts in the pseudo-gradient, :math:`w_s / |b_s|` (a probe row as a
            visit in a full mini-batch).
    """

    probs: Tensor
    labels: Tensor
    weights: Tensor


def simulated_client_softmax(
    model: nn.Module,
    aux: AuxiliaryData,
    local: LocalTraining,
    counts: Any,
    seed: int,
    repeats: int = REPEATS,
    bn_mode: str = "eval",
) -> SimulatedRows:
    """Softmax outputs of simulated FedAvg clients, taken where the real client's pseudo-gradient takes them.

    The pseudo-gradient :math:`-\\Delta/(\\eta \\sum_s w_s) = \\sum_s \\frac{w_s}{\\sum_r w_r} \\frac{1}{|b_s|}
    \\sum_{k \\in b_s} (p_k^{(s)} - y_k)` (plus weight decay) averages the softmax of each local mini-batch's samples
    at the weights :math:`\\theta_s` of that step, step s weighted by its momentum weight :math:`w_s`
    (:meth:`~inversion.fl.local.LocalTraining.step_weights`). A simulated client holds K auxiliary images with the
    class counts ``counts`` (drawn per class, in a random order) and runs the public schedule from the shared model
    (torch's SGD with the schedule's momentum and weight decay); every step's mini-batch softmax is recorded, one row
    per visit of a sample (including the effect of having trained on it before, as the real client's are), weighted
    :math:`w_s / |b_s|`. ``repeats`` clients with independent draws are pooled. Classes without a sample in the
    simulated batch (all classes, when S·B < K leaves samples unvisited) get rows too: up to :data:`PROBES` of
    their auxiliary images, evaluated (not trained on) at every step. (A DP-SGD client's clipping and noise are
    not simulated.)

    Args:
        model: the shared model :math:`\\theta_0` (not changed).
        aux: the auxiliary data.
        local: the client's public schedule (S, B, η).
        counts: (C,) int, the simulated batch's class counts (e.g. a first restoration), summing to K.
        seed: seed of the first simulated client (the others: ``seed + 1``, ...).
        repeats: how many simulated clients are pooled.
        bn_mode: the client's batch-norm mode during its local steps (``update.meta.bn_mode``).

    Returns:
        the rows (:class:`SimulatedRows`).
    """
    counts = np.asarray(counts, dtype=np.int64)
    labels = aux.labels.numpy()
    visits_all = local.steps >= local.batches_per_epoch(int(counts.sum()))  # else only the first mini-batches
    unvisited = np.flatnonzero(counts == 0) if visits_all else np.arange(counts.size)
    probes = np.concatenate([np.flatnonzero(labels == c)[:PROBES] for c in unvisited] or [np.zeros(0, dtype=np.int64)])
    rows, row_labels, row_weights = [], [], []
    step_weights = local.step_weights()
    for repeat in range(repeats):
        generator = np.random.default_rng(seed + repeat)
        draws = []
        for c in np.flatnonzero(counts):
            pool = np.flatnonzero(labels == c)
            pool = pool if pool.size else np.arange(labels.size)  # no image of the class: any, labelled c
            draws.append(generator.choice(pool, size=int(counts[c]), replace=bool(counts[c] > pool.size)))
        picked = np.concatenate(draws)
        picked_labels = np.repeat(np.arange(counts.size), counts)
        order = generator.permutation(picked.size)
        images = torch.cat([aux.images[picked[order]], aux.images[probes]])
        targets = torch.as_tensor(picked_labels[order], dtype=torch.int64)
        client = copy.deepcopy(model).train(bn_mode == "train")
        device = next(client.parameters()).device
        optimizer = local.optimizer([p for p in client.parameters() if p.requires_grad])
        orders = local.orders(picked.size, torch.Generator().manual_seed(seed + repeat))  # any order is as likely
        for step in range(local.steps):
            batch = orders[local.epoch(step, picked.size), local.rows(step, picked.size)]
            indices = torch.cat([batch, torch.arange(picked.size, images.shape[0])])
            optimizer.zero_grad()
            logits = client(images[indices].to(device))
            rows.append(torch.softmax(logits.detach().float(), dim=1).cpu())
            row_labels += [targets[batch], torch.as_tensor(labels[probes], dtype=torch.int64)]
            weight = float(step_weights[step])
            row_weights += [torch.full((batch.numel(),), weight / batch.numel(), dtype=torch.float64)]
            row_weights += [torch.full((probes.size,), weight / local.batch_size, dtype=torch.float64)]
            F.cross_entropy(logits[: batch.numel()], targets[batch].to(device)).backward()
            optimizer.step()
    return SimulatedRows(torch.cat(rows), torch.cat(row_labels), torch.cat(row_weights))


def _misfit(rows: SimulatedRows, counts: np.ndarray, grad_bias: Tensor, batch_size: int) -> tuple[float, Tensor]:
    """How badly counts explain the bias gradient under the statistics of clients simulated with those counts:
    the norm (samples) and the vector :math:`\\sum_j n_j (q_j(n) - e_j) - K \\nabla b`, (C,); an entry below 0
    says class :math:`i` has too many samples (roughly :math:`-r_i` of them)."""
    q, _, _ = class_conditional_probabilities(rows.probs, rows.labels, counts.size, "overall_mean", rows.weights)
    n = torch.as_tensor(counts, dtype=torch.float64)
    residual = q.T @ n - n - batch_size * grad_bias.double().cpu()
    return float(torch.linalg.vector_norm(residual)), residual


_Simulated = tuple[float, Tensor, np.ndarray, np.ndarray | None]
"""A FedAvg search's simulated client: (misfit, residual (C,), counts (C,), the counts restored with its statistics
or None)."""


def aux_restoration(
    update: SharedUpdate,
    model: nn.Module,
    aux: AuxiliaryData,
    batch_size: int,
    *,
    method: str = "aux",
    max_passes: int = MAX_PASSES,
    seed: int = 0,
    **options: Any,
) -> RestorationResult:
    """A label method that needs auxiliary data (``aux`` by default) on a shared update, with the auxiliary
    statistics it needs: the final layer's gradients and parameters, plus ``aux_probs`` and ``aux_labels``.

    FedSGD: one restoration with the model's softmax outputs on ``aux``. FedAvg: that restoration gives first
    counts; then clients with the current counts are simulated through the update's public schedule
    (:func:`simulated_client_softmax`) and the counts are restored again with the class means of their
    mini-batch softmax outputs and the update's pseudo-gradient, until the counts
    repeat (at most ``max_passes`` rounds). This iteration need not converge to the truth (a class
    overestimated makes the simulated model surer of it, which asks for still more of it), so it only proposes
    candidates: the counts that explain the pseudo-gradient best under their own simulation win (:func:`_misfit`),
    and from them single samples move between the :data:`MOVES` classes the misfit points at while it falls.
    Over whole local epochs without momentum every sample counts equally in the pseudo-gradient; otherwise some
    mini-batches count more (the first ones, with momentum: the weights :math:`w_s`), which no server can undo
    without the client's order: the simulated rows carry those weights, the counts stay confounded with the order.

    Args:
        update, model: the shared update and model.
        aux: the server's auxiliary data.
        batch_size: K.
        method: the registered label method (one that needs ``"auxiliary"``).
        max_passes: FedAvg: the most fixed-point rounds.
        seed: FedAvg: the first simulated client's seed.
        options: the method's options (for ``aux``: ``missing_classes``).

    Returns:
        the restoration, with ``details["aux"]`` = ``aux.record``, ``details["server_seconds"]`` (forward passes
        and simulation included) and, for FedAvg, ``details["first_pass_counts"]``, ``details["simulated_steps"]``
        ``details["simulations"]`` (how many were run) and ``details["misfit"]`` (the winner's, in samples); the
        FedAvg counts are integers from the search (raw counts = counts; no float solution in ``details``;
        ``seconds`` is the whole search's).

    Raises:
        ValueError: ``aux`` is of another dataset than the update (:meth:`AuxiliaryData.check_fits`), or the
            restoration's input is invalid.
    """
    aux.check_fits(update, model)
    start = time.perf_counter()
    grad_weight, grad_bias = update.final_layer_gradients(model)
    layer = final_layer(model)
    options = {
        "grad_weight": grad_weight,
        "grad_bias": grad_bias,
        "weight": layer.weight.detach(),
        "bias": None if layer.bias is None else layer.bias.detach(),
        "batch_size": batch_size,
        "aux_labels": aux.labels,
        **options,
    }
    result = restore_labels(method, aux_probs=softmax_outputs(model, aux.images), **options)
    extra: dict[str, Any] = {"aux": aux.record}
    if update.kind == "fedavg":
        local = update.meta.local
        assert local is not None  # a fedavg update records its local training (checked on creation)
        if grad_bias is None:
            raise InputError(
                f"{method} on a FedAvg update scores the counts by the final layer's bias gradient, but the "
                "model's final layer has no bias: use a FedSGD update or a model with a bias"
            )
        extra.update(
            first_pass_counts={str(c): int(n) for c, n in enumerate(result.counts) if n},
            simulated_steps=local.steps,
            simulations=0,
        )

        def simulate(counts: np.ndarray, restore: bool) -> _Simulated:
            """The clients simulated with ``counts``; their restored counts only with ``restore``."""
            rows = simulated_client_softmax(model, aux, local, counts, seed, bn_mode=update.meta.bn_mode)
            extra["simulations"] += 1
            restored = None
            if restore:
                simulated = {"aux_probs": rows.probs, "aux_labels": rows.labels, "aux_weights": rows.weights}
                restored = restore_labels(method, **{**options, **simulated}).counts
            return (*_misfit(rows, counts, grad_bias, batch_size), counts, restored)

        counts = result.counts
        scored: list[_Simulated] = []
        for _ in range(max_passes):  # fixed-point rounds: simulate with the counts, restore again
            if any(np.array_equal(counts, entry[2]) for entry in scored):
                break
            scored.append(simulate(counts, restore=True))
            restored = scored[-1][3]
            assert restored is not None  # simulate(restore=True) restores
            counts = restored
        best = min(scored, key=lambda entry: entry[0])
        for _ in range(batch_size):  # then move one sample at a time, where the residual points, while it helps
            misfit, residual, counts, _ = best
            sources = [int(c) for c in torch.argsort(residual) if counts[c] > 0][:MOVES]
            targets = [int(c) for c in torch.argsort(residual, descending=True)][:MOVES]
            tries = []
            for a, b in ((a, b) for a in sources for b in targets if a != b):
                moved = counts.copy()
                moved[a] -= 1
                moved[b] += 1
                tries.append(simulate(moved, restore=False))  # only its misfit is read
            if not tries or min(entry[0] for entry in tries) >= misfit:
                break
            best = min(tries, key=lambda entry: entry[0])
        counts = best[2]
        kept = {
            key: result.details[key]
            for key in ("aux_samples", "aux_per_class_min", "missing_classes")
            if key in result.details
        }
        result = make_result(method, counts, counts, counts > 0, batch_size, details=kept)
        extra.update(misfit=best[0], solver="simulation search")
    extra["server_seconds"] = time.perf_counter() - start
    seconds = extra["server_seconds"] if update.kind == "fedavg" else result.seconds
    return dataclasses.replace(result, seconds=seconds, details={**result.details, **extra})
