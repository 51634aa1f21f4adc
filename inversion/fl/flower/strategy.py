"""The honest-but-curious server: a strategy wrapper that saves every client's update before aggregating."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from torch import Tensor

from inversion.fl._records import model_digest
from inversion.fl.flower.protocol import (
    BN_MODE_KEY,
    GLOBAL_MODEL,
    LR_KEY,
    NUM_EXAMPLES_KEY,
    PARTITION_KEY,
    TaskInfo,
    captured_update,
    round_dir,
    single_record,
    update_path,
)
from inversion.models import ClassifierModel
from inversion.utils.errors import InputError
from inversion.utils.fileio import atomic_write


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

    def __init__(
        self,
        strategy: Strategy,
        task: TaskInfo,
        captured_dir: str | Path,
        *,
        on_round: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.strategy = strategy
        self.task = task
        self.captured_dir = Path(captured_dir)
        self.on_round = on_round
        self.rounds: list[dict[str, Any]] = []
        self._open: dict[int, tuple[ClassifierModel, dict[str, Any]]] = {}

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        started = time.perf_counter()
        model = self.task.build(arrays.to_torch_state_dict())
        path = round_dir(self.captured_dir, server_round) / GLOBAL_MODEL
        _save_state(model.state_dict(), path)
        if LR_KEY not in config or BN_MODE_KEY not in config:
            raise InputError(f"the train config must hold '{LR_KEY}' and '{BN_MODE_KEY}' (FedSGD's public protocol)")
        record = {
            "round": int(server_round),
            "global_model": str(path),
            "model_sha256": model_digest(model),
            "lr": float(config[LR_KEY]),
            "bn_mode": str(config[BN_MODE_KEY]),
            "started": started,
        }
        self._open[server_round] = (model, record)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        failed = [m for m in replies if m.has_error()]
        if failed:
            reasons = "; ".join(
                f"node {m.metadata.src_node_id}: {_short_reason(m.error.reason or 'no reason given')}" for m in failed
            )
            raise RuntimeError(f"round {server_round}: {len(failed)} of {len(replies)} clients failed: {reasons}")
        model, record = self._open.pop(server_round)
        clients = []
        for message in replies:
            content = message.content
            metrics = single_record(content.metric_records, "MetricRecord")
            after = dict(single_record(content.array_records, "ArrayRecord").to_torch_state_dict())
            partition_id = int(metrics[PARTITION_KEY])
            update = captured_update(
                model,
                after,
                self.task,
                lr=record["lr"],
                server_round=server_round,
                partition_id=partition_id,
                node_id=message.metadata.src_node_id,
                num_examples=int(metrics[NUM_EXAMPLES_KEY]),
                bn_mode=record["bn_mode"],
            )
            path = update.save(update_path(self.captured_dir, server_round, partition_id))
            clients.append(
                {
                    "partition_id": partition_id,
                    "node_id": int(message.metadata.src_node_id),
                    "num_examples": update.batch_size,
                    "update": str(path),
                    "update_sha256": update.sha256,
                }
            )
        result = self.strategy.aggregate_train(server_round, replies)
        record["clients"] = sorted(clients, key=lambda c: c["partition_id"])
        record["seconds"] = time.perf_counter() - record.pop("started")
        self.rounds.append(record)
        if self.on_round is not None:
            self.on_round(record)
        return result

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


def capturing_server_app(
    strategy: Strategy,
    initial_state: Mapping[str, Tensor],
    *,
    num_rounds: int,
    train_config: Mapping[str, Any],
    timeout: float = 3600.0,
) -> ServerApp:
    """A :class:`ServerApp` whose ``main`` runs ``strategy.start`` for ``num_rounds`` rounds from
    ``initial_state``, sending ``train_config`` to the clients every round."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord.from_torch_state_dict(dict(initial_state)),
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=ConfigRecord(dict(train_config)),
        )

    return app
