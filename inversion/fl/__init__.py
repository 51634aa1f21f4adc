"""The federated-learning side: what a client computes and shares, what stays private, and real federations.

- :mod:`.update`: :class:`SharedUpdate` and its public :class:`UpdateMeta` (what the server receives);
- :mod:`.private`: :class:`PrivateBatch` (what only the client knows; for scoring only);
- :mod:`.client`: the client's FedSGD gradient and :func:`client_update` (FedSGD or FedAvg);
- :mod:`.dp`: DP-SGD through Opacus (per-sample clipping, Gaussian noise, the RDP accountant's ε);
- :mod:`.local`: FedAvg's local training (:class:`LocalTraining`), as the client runs it and unrolled for the attack;
- :mod:`.defenses`: noise, clipping and sparsification of the shared gradients.
"""

from inversion.fl.client import BN_MODES, PARAMETER_SETS, client_gradients, client_update, final_layer_client_gradients
from inversion.fl.local import LocalTraining, local_training_delta, unroll_local_training
from inversion.fl.private import PrivateBatch
from inversion.fl.update import UPDATE_KINDS, SharedUpdate, UpdateMeta

__all__ = [
    "BN_MODES",
    "PARAMETER_SETS",
    "UPDATE_KINDS",
    "LocalTraining",
    "PrivateBatch",
    "SharedUpdate",
    "UpdateMeta",
    "client_gradients",
    "client_update",
    "final_layer_client_gradients",
    "local_training_delta",
    "unroll_local_training",
]
