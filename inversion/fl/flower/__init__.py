"""Flower: capture what a curious server gets in anyone's Flower app, and this project's FedSGD federation.

Needs the optional extra ``flwr[simulation]`` (Flower >= 1.20 Message API; written against 1.42). This
is the only module of :mod:`inversion` that imports :mod:`flwr`, and nothing imports it at package
import time.

**Capture in your own Flower app** (clients unchanged): wrap the ``ServerApp``'s strategy in a
:class:`CapturingStrategy` with the federation's model and its :class:`FederationProtocol` (what the clients
do that Flower's messages do not say: local epochs or steps, batch size, momentum, weight decay, shuffling,
batch-norm mode, and η unless the train config holds it)::

    protocol = FederationProtocol("fedavg", epochs=1, batch_size=32, momentum=0.9, shuffle=True)
    strategy = CapturingStrategy(FedAvg(), Net(), protocol, "captured", dataset="cifar10")

Every round it saves the global state the server sends (``captured/round_RRR/global_model.pt``) and each
reply as a :class:`~inversion.fl.update.SharedUpdate` (:func:`captured_update`): the FedAvg weight delta
w' - w with its local schedule, or the FedSGD gradient (w - w') / η, K from the reply's ``num-examples``,
and in ``meta.notes`` the round, node id, train config, reply metrics and the protocol.

**This project's federation** (:func:`run_fedsgd`, driven by ``scripts/federate.py``) is one user of it:

1. The server (a stock :class:`flwr.serverapp.strategy.FedAvg` wrapped in a :class:`CapturingStrategy`
   declaring :func:`fedsgd_protocol`) sends the global state ``w`` and a train
   :class:`~flwr.app.ConfigRecord` holding the public learning rate ``lr`` = η and the client's
   batch-norm mode (``bn-mode``); FedAvg adds ``server-round``.
2. Each client (:func:`fedsgd_client_app`) draws K images from its own partition, computes the gradient
   g of the mean cross-entropy, or with DP-SGD (:attr:`ClientSettings.dp`) the privatized gradient
   (per-sample clipping, Gaussian noise seeded by :func:`dp_noise_seed`), as the simulated FedSGD
   client does (:func:`~inversion.fl.client.client_update`), and replies ``w' = w - η g`` with a
   :class:`~flwr.app.MetricRecord` ``{num-examples: K, partition-id: p}``. FedAvg of these replies is
   exactly FedSGD, and the server keeps ``g = (w - w') / η`` (float64, stored as float32).

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

from inversion.fl.flower.capture import (
    BN_MODE_KEY,
    GLOBAL_MODEL,
    LR_KEY,
    NUM_EXAMPLES_KEY,
    PARTITION_KEY,
    FederationProtocol,
    Reply,
    captured_update,
    check_reply_arrays,
    plain_record,
    recover_gradients,
)
from inversion.fl.flower.client_app import fedsgd_client_app, fedsgd_train
from inversion.fl.flower.protocol import (
    LAYOUT,
    ClientSettings,
    TaskInfo,
    dp_noise_seed,
    draw_batch,
    fedsgd_protocol,
    partition_indices,
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
    "FederationProtocol",
    "Reply",
    "TaskInfo",
    "captured_update",
    "capturing_server_app",
    "check_reply_arrays",
    "dp_noise_seed",
    "draw_batch",
    "fedsgd_client_app",
    "fedsgd_protocol",
    "fedsgd_train",
    "partition_indices",
    "plain_record",
    "recover_gradients",
    "round_dir",
    "run_fedsgd",
    "sgd_step",
    "update_path",
]
