"""A whole FedSGD federation in Flower's simulation engine: client app, capturing server, quiet logs, clean exit."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import FedAvg

from inversion.fl.flower.capture import BN_MODE_KEY, LR_KEY
from inversion.fl.flower.client_app import fedsgd_client_app
from inversion.fl.flower.protocol import ClientSettings, fedsgd_protocol
from inversion.fl.flower.strategy import CapturingStrategy, capturing_server_app
from inversion.models import ClassifierModel
from inversion.utils.errors import InputError


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
    :class:`CapturingStrategy` declaring :func:`fedsgd_protocol` and writing to ``captured_dir``. Uses
    ``flwr.simulation.run_simulation``, which Flower 1.42 marks as deprecated in favour of the ``flwr run``
    CLI; the notice is hidden unless ``verbose`` (which also shows Flower's INFO logs and the clients'
    output). Ray is shut down when the run ends, also on errors.

    Returns:
        :attr:`CapturingStrategy.rounds`, one record per round.

    Raises:
        RuntimeError: a client failed (every failure's reason, after the run), or the federation stopped early.
    """
    sampled = num_clients if clients_per_round is None else int(clients_per_round)
    if not 1 <= sampled <= num_clients:
        raise InputError(f"clients_per_round must be in 1..{num_clients}, got {clients_per_round}")
    with _quiet_flower(verbose):
        from flwr.simulation import run_simulation  # its import sets up Flower's database layer (noisy)

        fedavg = FedAvg(
            fraction_train=sampled / num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=sampled,
            min_evaluate_nodes=0,
            min_available_nodes=num_clients,
        )
    strategy = CapturingStrategy(
        fedavg,
        initial_model,
        fedsgd_protocol(lr, bn_mode),
        captured_dir,
        **settings.task.inputs(),
        check_sign=settings.dp is None,  # DP-SGD's noise may flip the signs the check reads
        on_round=on_round,
    )
    server_app = capturing_server_app(
        strategy,
        initial_model.state_dict(),
        num_rounds=rounds,
        train_config={LR_KEY: float(lr), BN_MODE_KEY: str(bn_mode)},
    )
    backend_config = {
        "client_resources": {"num_cpus": float(cpus_per_client), "num_gpus": 0.0},
        "init_args": {"log_to_driver": bool(verbose), "logging_level": "INFO" if verbose else "ERROR"},
    }
    try:
        with _quiet_flower(verbose), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", category=FutureWarning)
            run_simulation(
                server_app=server_app,
                client_app=fedsgd_client_app(settings),
                num_supernodes=num_clients,
                backend_name="ray",
                backend_config=backend_config,
                verbose_logging=verbose,
            )
    finally:
        _shutdown_ray()
    failed = [f"round {r['round']}, node {f['node_id']}: {f['reason']}" for r in strategy.rounds for f in r["failed"]]
    if failed:
        raise RuntimeError(f"{len(failed)} client update(s) failed: {'; '.join(failed)}")
    if len(strategy.rounds) != rounds:
        raise RuntimeError(
            f"the federation ended after {len(strategy.rounds)} of {rounds} rounds "
            "(see Flower's log above; rerun with federation.verbose=true for details)"
        )
    return strategy.rounds
