"""The honest-but-curious server: a wrapper of any Flower strategy that saves every client's update before
aggregating."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from torch import Tensor, nn

from inversion.fl._records import model_digest
from inversion.fl.flower.capture import GLOBAL_MODEL, FederationProtocol, Reply, captured_update, plain_record
from inversion.fl.flower.protocol import round_dir, single_record, update_path
from inversion.fl.update import UpdateMeta
from inversion.models import final_layer
from inversion.utils.errors import InputError
from inversion.utils.fileio import atomic_write


def _short_reason(reason: str) -> str:
    """The client's own error message out of Flower's and Ray's wrapping (the whole reason if none is found)."""
    found = re.findall(r"Message: (.+?)'?>?$", reason, flags=re.MULTILINE)
    return found[-1].strip() if found else reason


def _save_state(state: Mapping[str, Tensor], path: Path) -> None:
    with atomic_write(path) as handle:
        torch.save({name: value.detach().cpu().contiguous() for name, value in state.items()}, handle)


def _update_file(captured_dir: Path, reply: Reply) -> Path:
    """``round_RRR/client_P.pt`` when the reply names its partition P, else ``round_RRR/node_N.pt``."""
    if reply.partition_id is not None:
        return update_path(captured_dir, reply.server_round, reply.partition_id)
    return round_dir(captured_dir, reply.server_round) / f"node_{int(reply.node_id)}.pt"


def _has_final_layer(model: nn.Module) -> bool:
    """Whether the model has a final linear layer (:func:`~inversion.models.final_layer`), whose bias the sign
    check reads."""
    try:
        final_layer(model)
    except InputError:
        return False
    return True


class CapturingStrategy(Strategy):
    """An honest-but-curious server: runs any Flower strategy unchanged, and keeps every client's update.

    Wrap the strategy of your own ``ServerApp`` (clients unchanged)::

        protocol = FederationProtocol("fedavg", epochs=1, batch_size=32, momentum=0.9, shuffle=True)
        strategy = CapturingStrategy(FedAvg(), Net(), protocol, "captured", dataset="cifar10")
        strategy.start(grid=grid, initial_arrays=arrays, train_config=ConfigRecord({"lr": 0.01}))

    Hooks (the :class:`~flwr.serverapp.strategy.Strategy` methods that :meth:`Strategy.start` calls):

    - :meth:`configure_train`: lets the wrapped strategy sample the clients and build its messages, then notes
      what each message carries (its train config, checked against the protocol) and saves the round's global
      state ``w`` as ``captured_dir/round_RRR/global_model.pt`` (through ``model``, so that its digest is that
      of the model the clients hold).
    - :meth:`aggregate_train`: turns every reply into a :class:`~inversion.fl.update.SharedUpdate`
      (:func:`~inversion.fl.flower.capture.captured_update`) saved as ``captured_dir/round_RRR/client_P.pt``
      (P the reply's ``partition-id`` metric) or ``node_N.pt`` (N its node id); then the wrapped strategy
      aggregates the same replies. Failed replies are noted in the round's record and passed on.
    - evaluation is delegated unchanged.

    Args:
        strategy: the server's real strategy (e.g. ``FedAvg``); its aggregation is what the clients get.
        model: the federation's model (any ``nn.Module``; a CPU copy holds each round's state, the caller's is
            not changed).
        protocol: what the clients do that the messages do not say (:class:`FederationProtocol`).
        captured_dir: where the captured files go.
        dataset, input_shape, mean, std: the public input facts recorded in every update's metadata, as
            :meth:`~inversion.fl.update.UpdateMeta.describe` takes them (a known ``dataset`` gives the others;
            your own data: ``input_shape=(C, H, W)``, ``mean=`` and ``std=`` of its normalisation).
        check_sign: refuse updates whose sign contradicts the protocol's kind (read from the final linear layer's
            bias; a model without one is not checked); False for noisy (DP-SGD) clients.
        on_round: called with each round's record after aggregation (e.g. a progress bar).

    Attributes:
        rounds: one record per finished round: ``round``, ``global_model`` and its ``model_sha256``, ``lr`` (a
            list when the clients were sent different ones),
            ``bn_mode``, ``seconds``, ``clients`` (``partition_id`` or None, ``node_id``, ``num_examples``,
            ``update`` path, ``update_sha256``) and ``failed`` (``node_id``, ``reason``).
    """

    def __init__(
        self,
        strategy: Strategy,
        model: nn.Module,
        protocol: FederationProtocol,
        captured_dir: str | Path,
        *,
        dataset: str | None = None,
        input_shape: Iterable[int] | None = None,
        mean: Iterable[float] | None = None,
        std: Iterable[float] | None = None,
        check_sign: bool = True,
        on_round: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        if not isinstance(strategy, Strategy) or not isinstance(model, nn.Module):
            raise InputError(
                "CapturingStrategy(strategy, model, protocol, captured_dir) wraps a Flower Strategy (e.g. FedAvg()) "
                f"and takes the federation's nn.Module; got a {type(strategy).__name__} and a {type(model).__name__}"
            )
        if not isinstance(protocol, FederationProtocol):
            raise InputError(f"protocol must be a FederationProtocol, got a {type(protocol).__name__}")
        describe: dict[str, Any] = {"dataset": dataset, "input_shape": input_shape, "mean": mean, "std": std}
        UpdateMeta.describe(**describe)  # invalid input facts: refused now, not in round 1
        self.strategy = strategy
        self.model = copy.deepcopy(model).cpu()
        self.protocol = protocol
        self.captured_dir = Path(captured_dir)
        self.check_sign = check_sign and _has_final_layer(self.model)
        self.on_round = on_round
        self.describe = describe
        self.rounds: list[dict[str, Any]] = []
        self._open: dict[int, tuple[dict[str, Any], dict[int, dict[str, Any]]]] = {}

    def summary(self) -> None:
        self.strategy.summary()

    def _global_state(self, messages: list[Message], server_round: int) -> dict[str, Tensor]:
        """The one state all the round's messages carry, loaded into :attr:`model` (cast to its dtypes)."""
        records = {id(r): r for r in (single_record(m.content.array_records, "ArrayRecord") for m in messages)}
        states = [dict(r.to_torch_state_dict()) for r in records.values()]
        if any(s.keys() != states[0].keys() or not all(torch.equal(s[n], states[0][n]) for n in s) for s in states):
            raise InputError(
                f"the strategy sends different weights to different clients in round {server_round}; "
                "CapturingStrategy captures federations with one global model per round"
            )
        try:
            self.model.load_state_dict(states[0])
        except RuntimeError as err:
            first = str(err).strip().splitlines()
            raise InputError(
                f"the weights the strategy sends do not fit the model given to CapturingStrategy: {first[-1].strip()}"
            ) from None
        return self.model.state_dict()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        started = time.perf_counter()
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        configs = {
            int(m.metadata.dst_node_id): plain_record(single_record(m.content.config_records, "ConfigRecord"))
            for m in messages
        }
        lrs = {self.protocol.round_lr(c) for c in configs.values()}  # refused before any client trains
        record: dict[str, Any] = {"round": int(server_round), "started": started}
        if messages:
            path = round_dir(self.captured_dir, server_round) / GLOBAL_MODEL
            _save_state(self._global_state(messages, server_round), path)
            record.update(global_model=str(path), model_sha256=model_digest(self.model))
        record.update(lr=lrs.pop() if len(lrs) == 1 else sorted(lrs), bn_mode=self.protocol.bn_mode)
        self._open[server_round] = (record, configs)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        record, configs = self._open.pop(server_round)
        clients, failed, files = [], [], set()
        for message in replies:
            node_id = int(message.metadata.src_node_id)
            if message.has_error():
                reason = _short_reason(message.error.reason or "no reason given")
                failed.append({"node_id": node_id, "reason": reason})
                continue
            content = message.content
            if node_id not in configs:
                raise InputError(f"round {server_round}: a reply from node {node_id}, which was sent no train message")
            reply = Reply(
                server_round,
                node_id,
                configs[node_id],
                plain_record(single_record(content.metric_records, "MetricRecord")),
            )
            after = dict(single_record(content.array_records, "ArrayRecord").to_torch_state_dict())
            update = captured_update(
                self.model, after, self.protocol, reply, check_sign=self.check_sign, **self.describe
            )
            path = _update_file(self.captured_dir, reply)
            if path in files:
                raise InputError(f"two replies in round {server_round} name the same client ({path.name})")
            files.add(path)
            update.save(path)
            clients.append(
                {
                    "partition_id": reply.partition_id,
                    "node_id": node_id,
                    "num_examples": update.batch_size,
                    "update": str(path),
                    "update_sha256": update.sha256,
                }
            )
        result = self.strategy.aggregate_train(server_round, replies)
        record["clients"] = sorted(
            clients, key=lambda c: (c["partition_id"] is None, c["partition_id"] or 0, c["node_id"])
        )
        record["failed"] = failed
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
