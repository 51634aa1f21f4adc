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

import os

# Flower reads this when imported: an offline research tool must not send usage telemetry unless asked to.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

try:
    import flwr  # noqa: F401
except ImportError as _err:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"Flower federations need the optional extra flwr[simulation]: pip install 'flwr[simulation]' ({_err})"
    ) from _err

from inversion.fl.flower.client_app import fedsgd_client_app, fedsgd_train
from inversion.fl.flower.protocol import (
    BN_MODE_KEY,
    GLOBAL_MODEL,
    LAYOUT,
    LR_KEY,
    NUM_EXAMPLES_KEY,
    PARTITION_KEY,
    ClientSettings,
    TaskInfo,
    captured_update,
    dp_noise_seed,
    draw_batch,
    partition_indices,
    recover_gradients,
    round_dir,
    sgd_step,
    update_path,
)
from inversion.fl.flower.simulation import run_fedsgd
from inversion.fl.flower.strategy import CapturingStrategy, capturing_server_app

__all__ = [
    "BN_MODE_KEY",
    "GLOBAL_MODEL",
    "LAYOUT",
    "LR_KEY",
    "NUM_EXAMPLES_KEY",
    "PARTITION_KEY",
    "CapturingStrategy",
    "ClientSettings",
    "TaskInfo",
    "captured_update",
    "capturing_server_app",
    "dp_noise_seed",
    "draw_batch",
    "fedsgd_client_app",
    "fedsgd_train",
    "partition_indices",
    "recover_gradients",
    "round_dir",
    "run_fedsgd",
    "sgd_step",
    "update_path",
]
