"""A real Flower federation running FedSGD, whose honest-but-curious server keeps every client's update.

Needs the optional extra ``flwr[simulation]`` (Flower >= 1.20 Message API; written against 1.42). This
is the only module of :mod:`inversion` that imports :mod:`flwr`, and nothing imports it at package
import time.

The protocol (FedSGD as one local SGD step under standard FedAvg):

1. The server (a stock :class:`flwr.serverapp.strategy.FedAvg`, run by :meth:`Strategy.start`) sends
   the global state ``w`` (an :class:`~flwr.app.ArrayRecord` of the model's ``state_dict``) and a
   train :class:`~flwr.app.ConfigRecord` holding the public learning rate ``lr`` = η and the client's
   batch-norm mode (``bn-mode``); FedAvg adds ``server-round``.
2. Each client (:func:`fedsgd_client_app`) draws K images from its own partition, computes the gradient
   g of the mean cross-entropy, or with DP-SGD (:attr:`ClientSettings.dp`) the privatized gradient
   (per-sample clipping, Gaussian noise seeded by :func:`dp_noise_seed`), as the simulated FedSGD
   client does (:func:`~inversion.fl.client.client_update`), and replies ``w' = w - η g`` with a
   :class:`~flwr.app.MetricRecord` ``{num-examples: K, partition-id: p}``. FedAvg of these replies is
   exactly FedSGD.
3. :class:`CapturingStrategy` wraps the strategy. Its ``configure_train`` saves the global state of
   the round; its ``aggregate_train`` recovers ``g = (w - w') / η`` from every reply (float64, stored
   as float32) and saves it as a :class:`~inversion.fl.update.SharedUpdate` *before* handing the
   replies, untouched, to the wrapped strategy's normal aggregation.

What the server sees lies under ``captured/``; what only the clients know (their batches) is written
by the client code of the simulation under ``private/``, for scoring only (:data:`LAYOUT`). Each
private file carries the sha256 of the update the server captures from it: the client computes that
update itself with the server's own :func:`captured_update`, which is exact (see :func:`fedsgd_train`).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

# Flower reads this when imported: an offline research tool must not send usage telemetry unless asked to.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
    from flwr.clientapp import ClientApp  # noqa: E402
    from flwr.serverapp import Grid, ServerApp  # noqa: E402
    from flwr.serverapp.strategy import FedAvg, Strategy  # noqa: E402
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"Flower federations need the optional extra flwr[simulation]: pip install 'flwr[simulation]' ({_err})"
    ) from _err

from ..data import load_source, sample_indices  # noqa: E402
from ..data.fileio import atomic_write  # noqa: E402
from ..models import ClassifierModel, build_model  # noqa: E402
from ._records import model_digest  # noqa: E402
from .client import client_update  # noqa: E402
from .dp import DPSGD, noise_seed  # noqa: E402
from .private import PrivateBatch  # noqa: E402
from .update import SharedUpdate, UpdateMeta  # noqa: E402

__all__ = [
    "LR_KEY", "BN_MODE_KEY", "NUM_EXAMPLES_KEY", "PARTITION_KEY", "GLOBAL_MODEL", "LAYOUT",
    "TaskInfo", "ClientSettings", "CapturingStrategy",
    "round_dir", "update_path", "partition_indices", "draw_batch", "dp_noise_seed", "sgd_step", "recover_gradients",
    "captured_update", "fedsgd_train", "fedsgd_client_app", "capturing_server_app", "run_fedsgd",
]

LR_KEY = "lr"
"""Train-config key of the public learning rate η."""
BN_MODE_KEY = "bn-mode"
"""Train-config key of the clients' batch-norm mode (part of the public protocol)."""
NUM_EXAMPLES_KEY = "num-examples"
"""Reply-metric key of K (FedAvg weights by it, so the protocol reveals it)."""
PARTITION_KEY = "partition-id"
"""Reply-metric key of the client's id (its data partition), which it reports to the server."""
GLOBAL_MODEL = "global_model.pt"
"""File name of a round's global ``state_dict``, next to that round's captured updates."""
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
        raise ValueError(f"cannot split {num_items} images into {num_partitions} non-empty partitions")
    order = np.random.default_rng(seed).permutation(num_items)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_partitions)]


def draw_batch(targets: np.ndarray, partition: np.ndarray, settings: ClientSettings, num_classes: int,
               server_round: int, partition_id: int) -> np.ndarray:
    """Indices (into the source) of the client's batch in a round: K drawn from its partition by its sampler,
    seeded by ``[settings.seed, server_round, partition_id]``."""
    rng = np.random.default_rng([int(settings.seed), int(server_round), int(partition_id)])
    local = sample_indices(
        np.asarray(targets)[partition], num_classes, settings.batch_size, settings.sampler, rng=rng,
        counts=settings.counts, classes=settings.classes, target_class=settings.target_class,
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
    return int(rng.integers(2 ** 63))


def sgd_step(model: nn.Module, gradients: Mapping[str, Tensor], lr: float) -> dict[str, Tensor]:
    """The model's state after one SGD step: ``p - lr * g`` for every parameter with a gradient, in the
    parameter's dtype; buffers (e.g. batch-norm statistics) unchanged. The model itself is not modified."""
    state = {name: value.detach().clone() for name, value in model.state_dict().items()}
    for name, grad in gradients.items():
        state[name] = state[name] - lr * grad.detach().to(state[name].dtype)
    return state


def recover_gradients(before: Mapping[str, Tensor], after: Mapping[str, Tensor], lr: float,
                      names: Iterable[str]) -> dict[str, Tensor]:
    """What a FedSGD server recovers from one reply: ``g = (w - w') / lr`` per named parameter.

    Computed in float64 from the float32 states and stored as float32. Each operation is a
    correctly rounded IEEE-754 elementwise operation, so the result is a deterministic function of
    the bits of ``w``, ``w'`` and ``lr`` (any process, any thread count).

    It differs from the client's float32 gradient only by the rounding of ``w' = w - lr g``:
    ``|g_recovered - g| <= 2^-23 |g| + 2^-24 |w'| / lr`` (plus float64 rounding, far smaller).
    """
    if not lr > 0:
        raise ValueError(f"the learning rate must be > 0 to recover a gradient, got {lr}")
    return {name: ((before[name].double() - after[name].double()) / float(lr)).float() for name in names}


def captured_update(model: nn.Module, after: Mapping[str, Tensor], task: TaskInfo, *, lr: float,
                    server_round: int, partition_id: int, node_id: int, num_examples: int,
                    bn_mode: str) -> SharedUpdate:
    """The :class:`SharedUpdate` an honest-but-curious FedSGD server gets from one reply.

    ``model`` holds the global state w the server sent; ``after`` is the state w' the client replied.
    The metadata records what the protocol reveals: the architecture and state digest, the
    normalisation, ``bn_mode``, K (``num-examples``), η, the round, the client's partition id and
    Flower node id, and ``weights`` = :data:`GLOBAL_MODEL` (relative to the update's folder).

    The server's capture and the client's prediction of it (for the private link) both call this
    function on bit-identical inputs, so both get the same :attr:`SharedUpdate.sha256`.
    """
    before = model.state_dict()
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    gradients = recover_gradients(before, after, lr, names)
    meta = UpdateMeta.describe(
        model, dataset=task.dataset, input_shape=task.input_shape, mean=task.mean, std=task.std,
        bn_mode=bn_mode, weights=GLOBAL_MODEL,
        notes={"protocol": "fedsgd", "lr": float(lr), "round": int(server_round), "client": int(partition_id),
               "node_id": int(node_id)},
    )
    return SharedUpdate(gradients, int(num_examples), meta)


@lru_cache(maxsize=2)
def _source(data_items: tuple[tuple[str, Any], ...]):
    """The image source, loaded once per (Ray actor) process."""
    data = dict(data_items)
    for key in ("image_size", "mean", "std"):
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    return load_source(data.pop("name"), **data)


def _hashable(data: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in data.items()))


def _single(records: Mapping[str, Any], what: str) -> Any:
    if len(records) != 1:
        raise ValueError(f"expected exactly one {what} in the message, found {len(records)}")
    return next(iter(records.values()))


def fedsgd_train(message: Message, context: Context, settings: ClientSettings) -> Message:
    """One FedSGD client step (the body of :func:`fedsgd_client_app`'s ``train`` handler).

    Reads w, η, the round and the batch-norm mode from the message; draws the client's batch from its
    partition (``partition-id`` / ``num-partitions`` of the node config); replies w' = w - η g with
    ``{num-examples: K, partition-id: p}``, g privatized by DP-SGD when ``settings.dp`` is set. When
    ``settings.private_dir`` is set, also writes the batch as a :class:`PrivateBatch` tied to the update
    the server will capture (with the DP noise's seed, ``dp_noise_seed``, under DP-SGD).

    The private link: the server's capture (:func:`captured_update` on w, w', η and public facts) is a
    deterministic function of data the client holds bit for bit (Flower's ArrayRecord carries the
    ``.npy`` bytes losslessly), so the client computes the same update and writes its sha256. There is
    no float-rounding gap to bridge, and no private data ever passes through the server's code.
    :func:`~inversion.federate.run_federation` re-checks every link after the run.
    """
    content = message.content
    config = _single(content.config_records, "ConfigRecord")
    server_round = int(config["server-round"])
    lr = float(config[LR_KEY])
    bn_mode = str(config[BN_MODE_KEY])
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    task = settings.task

    model = task.build(_single(content.array_records, "ArrayRecord").to_torch_state_dict())
    source = _source(_hashable(settings.data))
    if len(source) != settings.num_items:
        raise ValueError(f"the client's data source has {len(source)} images, the federation was set up for "
                         f"{settings.num_items} ({source.description})")
    partition = partition_indices(len(source), num_partitions, settings.partition_seed)[partition_id]
    indices = draw_batch(source.targets, partition, settings, source.spec.num_classes, server_round, partition_id)
    images = source.spec.normalize(source.images(indices))
    labels = torch.as_tensor(source.targets[indices], dtype=torch.int64)

    seed = None if settings.dp is None else dp_noise_seed(settings, server_round, partition_id)
    gradients = client_update(model, images, labels, bn_mode=bn_mode, chunk_size=settings.chunk_size,
                              dp=settings.dp, dp_seed=seed).gradients  # the simulated client's computation
    after = sgd_step(model, gradients, lr)
    if settings.private_dir is not None:
        expected = captured_update(model, after, task, lr=lr, server_round=server_round, partition_id=partition_id,
                                   node_id=context.node_id, num_examples=len(labels), bn_mode=bn_mode)
        record = {
            **settings.record,
            "protocol": "fedsgd",
            "round": server_round,
            "partition_id": partition_id,
            "node_id": int(context.node_id),
            "num_partitions": num_partitions,
            "partition_seed": settings.partition_seed,
            "partition_size": int(len(partition)),
            "batch_seed": [int(settings.seed), server_round, partition_id],
            "sampler": settings.sampler,
            "replacement": settings.replacement,
            "indices": [int(i) for i in indices],
            "data_source": source.description,
            "labels": "real",
            **({} if seed is None else {"dp_noise_seed": seed}),
        }
        PrivateBatch(images, labels, record, expected.sha256).save(
            update_path(settings.private_dir, server_round, partition_id))
    reply = RecordDict({
        "arrays": ArrayRecord.from_torch_state_dict(after),
        "metrics": MetricRecord({NUM_EXAMPLES_KEY: len(labels), PARTITION_KEY: partition_id}),
    })
    return Message(reply, reply_to=message)


def fedsgd_client_app(settings: ClientSettings) -> ClientApp:
    """A Flower :class:`ClientApp` whose ``train`` handler is one FedSGD step (:func:`fedsgd_train`)."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return fedsgd_train(message, context, settings)

    return app


def _short_reason(reason: str) -> str:
    """The client's own error message out of Flower's and Ray's wrapping (the whole reason if none is found)."""
    found = re.findall(r"Message: (.+?)'?>?$", reason, flags=re.MULTILINE)
    return found[-1].strip() if found else reason


def _save_state(state: Mapping[str, Tensor], path: Path) -> None:
    with atomic_write(path) as handle:
        torch.save({name: value.detach().cpu().contiguous() for name, value in state.items()}, handle)


class CapturingStrategy(Strategy):
    """An honest-but-curious server: runs the wrapped strategy unchanged, and keeps every client's update.

    Hooks (the :class:`~flwr.serverapp.strategy.Strategy` methods that :meth:`Strategy.start` calls):

    - :meth:`configure_train`: saves the round's global state ``w`` (``captured_dir/round_RRR/global_model.pt``,
      normalised through the architecture so that its digest is the clients' model digest) and notes η
      and the batch-norm mode from the train config; then the wrapped strategy samples clients.
    - :meth:`aggregate_train`: for every reply, recovers ``g = (w - w') / η`` (:func:`captured_update`)
      and saves it as ``captured_dir/round_RRR/client_P.pt``; then the wrapped strategy aggregates
      the same replies. A failed reply is an error (the capture would be incomplete).
    - evaluation is delegated unchanged.

    Args:
        strategy: the server's real strategy (e.g. ``FedAvg``); its aggregation is what the clients get.
        task: the public :class:`TaskInfo` (the architecture the server trains).
        captured_dir: where the captured files go.
        on_round: called with each round's record after aggregation (e.g. a progress bar).

    Attributes:
        rounds: one record per finished round: ``round``, ``global_model`` and its ``model_sha256``,
            ``lr``, ``seconds``, and ``clients`` (``partition_id``, ``node_id``, ``num_examples``,
            ``update`` path, ``update_sha256``).
    """

    def __init__(self, strategy: Strategy, task: TaskInfo, captured_dir: str | Path, *,
                 on_round: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.strategy = strategy
        self.task = task
        self.captured_dir = Path(captured_dir)
        self.on_round = on_round
        self.rounds: list[dict[str, Any]] = []
        self._open: dict[int, tuple[ClassifierModel, dict[str, Any]]] = {}

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        started = time.perf_counter()
        model = self.task.build(arrays.to_torch_state_dict())
        path = round_dir(self.captured_dir, server_round) / GLOBAL_MODEL
        _save_state(model.state_dict(), path)
        if LR_KEY not in config or BN_MODE_KEY not in config:
            raise ValueError(f"the train config must hold '{LR_KEY}' and '{BN_MODE_KEY}' (FedSGD's public protocol)")
        record = {"round": int(server_round), "global_model": str(path), "model_sha256": model_digest(model),
                  "lr": float(config[LR_KEY]), "bn_mode": str(config[BN_MODE_KEY]), "started": started}
        self._open[server_round] = (model, record)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        failed = [m for m in replies if m.has_error()]
        if failed:
            reasons = "; ".join(f"node {m.metadata.src_node_id}: {_short_reason(m.error.reason)}" for m in failed)
            raise RuntimeError(f"round {server_round}: {len(failed)} of {len(replies)} clients failed: {reasons}")
        model, record = self._open.pop(server_round)
        clients = []
        for message in replies:
            content = message.content
            metrics = _single(content.metric_records, "MetricRecord")
            after = dict(_single(content.array_records, "ArrayRecord").to_torch_state_dict())
            partition_id = int(metrics[PARTITION_KEY])
            update = captured_update(
                model, after, self.task, lr=record["lr"], server_round=server_round, partition_id=partition_id,
                node_id=message.metadata.src_node_id, num_examples=int(metrics[NUM_EXAMPLES_KEY]),
                bn_mode=record["bn_mode"],
            )
            path = update.save(update_path(self.captured_dir, server_round, partition_id))
            clients.append({"partition_id": partition_id, "node_id": int(message.metadata.src_node_id),
                            "num_examples": update.batch_size, "update": str(path), "update_sha256": update.sha256})
        result = self.strategy.aggregate_train(server_round, replies)
        record["clients"] = sorted(clients, key=lambda c: c["partition_id"])
        record["seconds"] = time.perf_counter() - record.pop("started")
        self.rounds.append(record)
        if self.on_round is not None:
            self.on_round(record)
        return result

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def capturing_server_app(strategy: Strategy, initial_state: Mapping[str, Tensor], *, num_rounds: int,
                         train_config: Mapping[str, Any], timeout: float = 3600.0) -> ServerApp:
    """A :class:`ServerApp` whose ``main`` runs ``strategy.start`` for ``num_rounds`` rounds from
    ``initial_state``, sending ``train_config`` to the clients every round."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid, initial_arrays=ArrayRecord.from_torch_state_dict(dict(initial_state)),
                       num_rounds=num_rounds, timeout=timeout, train_config=ConfigRecord(dict(train_config)))

    return app


class _DropKnownNotices(logging.Filter):
    """Hides two notices this module triggers on purpose (see :func:`run_fedsgd`)."""

    NOTICES = ("`run_simulation` function is deprecated", "fraction_evaluate is set to 0.0")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(notice in text for notice in self.NOTICES)


@contextmanager
def _quiet_flower(verbose: bool) -> Iterator[None]:
    """Unless ``verbose``: Flower's and its database layer's (alembic's) INFO logs off, known notices hidden."""
    loggers = [logging.getLogger(name) for name in ("flwr", "alembic")]
    levels, notice_filter = [logger.level for logger in loggers], _DropKnownNotices()
    if not verbose:
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        loggers[0].addFilter(notice_filter)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        loggers[0].removeFilter(notice_filter)


def _shutdown_ray() -> None:
    """Stop Ray if this process still has it running (the simulation engine normally stops it itself)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def run_fedsgd(
    initial_model: ClassifierModel,
    settings: ClientSettings,
    *,
    num_clients: int,
    rounds: int,
    lr: float,
    bn_mode: str,
    captured_dir: str | Path,
    clients_per_round: int | None = None,
    cpus_per_client: float = 1.0,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    verbose: bool = False,
) -> list[dict[str, Any]]:
    """Run a FedSGD federation in Flower's simulation engine (Ray backend, CPU) and capture every update.

    ``num_clients`` virtual SuperNodes run :func:`fedsgd_client_app`; the server runs a stock ``FedAvg``
    (``clients_per_round`` of them each round, all by default; no federated evaluation) wrapped in a
    :class:`CapturingStrategy` writing to ``captured_dir``. Uses ``flwr.simulation.run_simulation``,
    which Flower 1.42 marks as deprecated in favour of the ``flwr run`` CLI; the notice is hidden
    unless ``verbose`` (which also shows Flower's INFO logs and the clients' output). Ray is shut down
    when the run ends, also on errors.

    Returns:
        :attr:`CapturingStrategy.rounds`, one record per round.
    """
    sampled = num_clients if clients_per_round is None else int(clients_per_round)
    if not 1 <= sampled <= num_clients:
        raise ValueError(f"clients_per_round must be in 1..{num_clients}, got {clients_per_round}")
    with _quiet_flower(verbose):
        from flwr.simulation import run_simulation  # its import sets up Flower's database layer (noisy)

        fedavg = FedAvg(fraction_train=sampled / num_clients, fraction_evaluate=0.0, min_train_nodes=sampled,
                        min_evaluate_nodes=0, min_available_nodes=num_clients)
    strategy = CapturingStrategy(fedavg, settings.task, captured_dir, on_round=on_round)
    server_app = capturing_server_app(strategy, initial_model.state_dict(), num_rounds=rounds,
                                      train_config={LR_KEY: float(lr), BN_MODE_KEY: str(bn_mode)})
    backend_config = {
        "client_resources": {"num_cpus": float(cpus_per_client), "num_gpus": 0.0},
        "init_args": {"log_to_driver": bool(verbose), "logging_level": "INFO" if verbose else "ERROR"},
    }
    try:
        with _quiet_flower(verbose), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", category=FutureWarning)
            run_simulation(server_app=server_app, client_app=fedsgd_client_app(settings), num_supernodes=num_clients,
                           backend_name="ray", backend_config=backend_config, verbose_logging=verbose)
    finally:
        _shutdown_ray()
    if len(strategy.rounds) != rounds:
        raise RuntimeError(f"the federation ended after {len(strategy.rounds)} of {rounds} rounds "
                           "(see Flower's log above; rerun with federation.verbose=true for details)")
    return strategy.rounds
