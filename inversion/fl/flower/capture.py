"""What a curious server learns from one Flower reply: the federation's declared protocol, and the update.

A Flower reply carries the client's new weights w' (an ``ArrayRecord``) and its metrics (with
``num-examples`` = K, which FedAvg weights by); the server knows the weights w and the train config it sent,
the round and the client's node id. What the messages do not carry (the local epochs or steps, batch size,
momentum, weight decay, shuffling, batch-norm mode, and the learning rate unless the train config holds it),
the server's operator declares once as the :class:`FederationProtocol`. :func:`captured_update` turns one
reply into a :class:`~inversion.fl.update.SharedUpdate`: a FedAvg weight delta Δ = w' - w with its local
schedule, or a FedSGD gradient g = (w - w') / η.

Nothing here imports :mod:`flwr`: a reply is described by plain data (:class:`Reply`).
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import Tensor, nn

from inversion.fl.local import LocalTraining
from inversion.fl.update import BN_MODES, UPDATE_KINDS, SharedUpdate
from inversion.utils.errors import InputError

__all__ = [
    "BN_MODE_KEY",
    "GLOBAL_MODEL",
    "LR_KEY",
    "NUM_EXAMPLES_KEY",
    "PARTITION_KEY",
    "FederationProtocol",
    "Reply",
    "captured_update",
    "check_reply_arrays",
    "plain_record",
    "recover_gradients",
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
EPOCHS_KEY = "local-epochs"
"""Train-config key of the local epochs in Flower's app templates (checked against the protocol when sent)."""
BATCH_SIZE_KEY = "batch-size"
"""Train-config key of the local batch size in Flower's app templates (checked likewise)."""
_CHECKED_KEYS = {LR_KEY: "lr", BN_MODE_KEY: "bn_mode", EPOCHS_KEY: "epochs", BATCH_SIZE_KEY: "batch_size"}
"""Train-config key -> the :class:`FederationProtocol` field it must agree with, when both are set."""


def _same(sent: Any, declared: Any) -> bool:
    """Whether a train-config value agrees with the declared one (numbers to float64 rounding)."""
    if isinstance(declared, float):
        return isinstance(sent, numbers.Real) and math.isclose(float(sent), declared, rel_tol=1e-9)
    return bool(sent == declared)


@dataclass(frozen=True)
class FederationProtocol:
    """The public protocol of a federation: what its clients do that Flower's messages do not say.

    Declared once by the server's operator and recorded with every captured update (``meta.notes["protocol"]``).

    Attributes:
        kind: ``"fedavg"``: clients train locally (torch's SGD, :class:`~inversion.fl.local.LocalTraining`) and
            reply their new weights; the server keeps Δ = w' - w. ``"fedsgd"``: clients take one plain SGD step
            on their whole batch; the server keeps the gradient g = (w - w') / η.
        lr: η, the clients' learning rate; None: read every round from the train config's ``lr``.
        epochs: E, local epochs (``fedavg``; S = E·⌈K/B⌉ steps, with K each reply's ``num-examples``).
        steps: S, local optimizer steps (``fedavg``), instead of ``epochs``.
        batch_size: B, the clients' local mini-batch size (``fedavg``; a ``DataLoader``'s ``batch_size``).
        momentum, weight_decay: μ and λ of the clients' ``torch.optim.SGD`` (``fedavg``).
        shuffle: the clients reshuffle their samples every local epoch (``DataLoader(shuffle=True)``; ``fedavg``).
        bn_mode: ``"train"`` when the clients train a batch-norm model in train mode (``model.train()``), else
            ``"eval"`` (running statistics; any model without batch norm).

    Raises:
        InputError: an unknown kind, a FedAvg protocol without B or with both (or neither of) E and S, FedSGD
            with local-training options, or an invalid value.
    """

    kind: str = "fedavg"
    lr: float | None = None
    epochs: int | None = None
    steps: int | None = None
    batch_size: int | None = None
    momentum: float = 0.0
    weight_decay: float = 0.0
    shuffle: bool = False
    bn_mode: str = "eval"

    def __post_init__(self) -> None:
        if self.kind not in UPDATE_KINDS:
            raise InputError(f"the protocol's kind must be one of {', '.join(UPDATE_KINDS)}, got {self.kind!r}")
        if self.bn_mode not in BN_MODES:
            raise InputError(f"the protocol's bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
        local = {k: getattr(self, k) for k in ("epochs", "steps", "batch_size", "momentum", "weight_decay", "shuffle")}
        if self.kind == "fedsgd":
            given = [k for k, v in local.items() if v not in (None, 0.0, False)]
            if given:
                raise InputError(
                    f"a FedSGD client takes one plain SGD step on its whole batch; {', '.join(given)} describe local "
                    "training: declare kind='fedavg'"
                )
        elif self.batch_size is None or (self.epochs is None) == (self.steps is None):
            raise InputError(
                "a FedAvg protocol needs the clients' batch_size and either epochs or steps (not both), got "
                + ", ".join(f"{k}={v!r}" for k, v in local.items() if v is not None)
            )
        if self.lr is not None:
            if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not 0 < self.lr < math.inf:
                raise InputError(
                    f"the protocol's lr must be > 0 and finite (or None: the train config's), got {self.lr!r}"
                )
            object.__setattr__(self, "lr", float(self.lr))
        if self.kind == "fedavg":
            self.local(1, 1.0)  # checks epochs, steps, batch size, momentum, weight decay and shuffle now

    def round_lr(self, train_config: Mapping[str, Any]) -> float:
        """η of a round: the declared one, or the train config's ``lr``; both when both are set, checked to agree.

        Raises:
            InputError: neither gives η, or the train config disagrees with a declared value (``lr``, ``bn-mode``,
                ``local-epochs``, ``batch-size``).
        """
        for key, name in _CHECKED_KEYS.items():
            declared, sent = getattr(self, name), train_config.get(key)
            if declared is not None and sent is not None and not _same(sent, declared):
                raise InputError(
                    f"the train config sends {key}={sent!r} but the declared protocol says {name}={declared!r}: "
                    "declare what the clients run (FederationProtocol)"
                )
        lr = train_config.get(LR_KEY, self.lr)
        if lr is None:
            raise InputError(
                f"no learning rate: the train config holds no '{LR_KEY}'; declare it (FederationProtocol(lr=...))"
            )
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < float(lr) < math.inf:
            raise InputError(f"the train config's {LR_KEY}={lr!r} is no learning rate (a number > 0)")
        return float(lr)

    def local(self, k: int, lr: float) -> LocalTraining:
        """A FedAvg client's local schedule over its K samples at learning rate η."""
        if self.kind != "fedavg" or self.batch_size is None:
            raise InputError("only a FedAvg protocol has a local schedule")
        options: dict[str, Any] = {
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "shuffle": self.shuffle,
        }
        if self.epochs is not None:
            return LocalTraining.from_epochs(self.epochs, self.batch_size, lr, k, **options)
        assert self.steps is not None  # a FedAvg protocol has epochs or steps (checked on creation)
        return LocalTraining(self.steps, self.batch_size, lr, **options)

    def to_json(self) -> dict[str, Any]:
        """The protocol as plain data (what ``meta.notes["protocol"]`` records)."""
        return asdict(self)


def plain_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A Flower ``ConfigRecord`` or ``MetricRecord`` as JSON-ready data: bytes become their length and sha256."""

    def plain(value: Any) -> Any:
        if isinstance(value, bytes):
            return {"bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return {str(key): plain(value) for key, value in record.items()}


@dataclass(frozen=True)
class Reply:
    """What the server knows about one client's reply, besides its arrays.

    Attributes:
        server_round: the round.
        node_id: the client's Flower node id (the reply's ``metadata.src_node_id``).
        train_config: the train config the server sent this client (:func:`plain_record`).
        metrics: the reply's metrics (:func:`plain_record`).
    """

    server_round: int
    node_id: int
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """How error messages name the reply."""
        return f"node {self.node_id}'s reply in round {self.server_round}"

    @property
    def num_examples(self) -> int:
        """K, the reply's ``num-examples`` (InputError when missing or not a positive integer)."""
        k = self.metrics.get(NUM_EXAMPLES_KEY)
        if k is None:
            raise InputError(
                f"{self.where} has no '{NUM_EXAMPLES_KEY}' metric: the client must report K, as Flower's FedAvg "
                "needs it (MetricRecord({'num-examples': len(trainloader.dataset), ...}))"
            )
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not (k >= 1 and float(k).is_integer()):
            raise InputError(f"{self.where} reports {NUM_EXAMPLES_KEY}={k!r}, not a positive whole number")
        return int(k)

    @property
    def partition_id(self) -> int | None:
        """The reply's ``partition-id`` metric, if the client reports one."""
        value = self.metrics.get(PARTITION_KEY)
        return None if value is None else int(value)

    def notes(self, protocol: FederationProtocol, lr: float) -> dict[str, Any]:
        """The public facts recorded with the update (``meta.notes``)."""
        notes = {
            "round": int(self.server_round),
            "node_id": int(self.node_id),
            "lr": float(lr),
            "train_config": dict(self.train_config),
            "metrics": dict(self.metrics),
            "protocol": protocol.to_json(),
        }
        if self.partition_id is not None:
            notes["client"] = self.partition_id
        return notes


def recover_gradients(
    before: Mapping[str, Tensor], after: Mapping[str, Tensor], lr: float, names: Iterable[str]
) -> dict[str, Tensor]:
    """What a FedSGD server recovers from one reply: ``g = (w - w') / lr`` per named parameter.

    Computed in float64 from the float32 states and stored as float32. Each operation is a
    correctly rounded IEEE-754 elementwise operation, so the result is a deterministic function of
    the bits of ``w``, ``w'`` and ``lr`` (any process, any thread count).

    It differs from the client's float32 gradient only by the rounding of ``w' = w - lr g``:
    ``|g_recovered - g| <= 2^-23 |g| + 2^-24 |w'| / lr`` (plus float64 rounding, far smaller).
    """
    if not lr > 0:
        raise InputError(f"the learning rate must be > 0 to recover a gradient, got {lr}")
    return {name: ((before[name].double() - after[name].double()) / float(lr)).float() for name in names}


def check_reply_arrays(before: Mapping[str, Tensor], after: Mapping[str, Tensor], where: str) -> None:
    """InputError unless the reply's arrays ``after`` have the names and shapes of the global state ``before``."""
    missing, extra = [n for n in before if n not in after], [n for n in after if n not in before]
    if missing or extra:
        raise InputError(
            f"{where} does not hold the model's arrays (missing {missing[:3]}, unexpected {extra[:3]}): the clients "
            "must reply ArrayRecord(model.state_dict()) of the server's model"
        )
    for name, value in before.items():
        if tuple(after[name].shape) != tuple(value.shape):
            raise InputError(
                f"{where} holds {name!r} of shape {tuple(after[name].shape)}, the model's is {tuple(value.shape)}"
            )


def captured_update(
    model: nn.Module,
    after: Mapping[str, Tensor],
    protocol: FederationProtocol,
    reply: Reply,
    *,
    check_sign: bool = True,
    **describe: Any,
) -> SharedUpdate:
    """The :class:`SharedUpdate` a curious server gets from one reply.

    A deterministic function of its inputs: a client that holds the same w, w' and facts gets the same
    :attr:`SharedUpdate.sha256` (the simulation's private link relies on it).

    Args:
        model: the server's model, holding the global state w it sent this round.
        after: the reply's state w' (name -> tensor, as ``ArrayRecord.to_torch_state_dict()`` gives it).
        protocol: the federation's declared protocol.
        reply: the round, node id, train config and metrics of the reply.
        check_sign: refuse an update whose final-layer bias has the other kind's sign
            (:meth:`SharedUpdate.from_weight_delta`); off for noisy (DP-SGD) clients.
        describe: further :meth:`~inversion.fl.update.UpdateMeta.describe` arguments (``dataset=``,
            ``input_shape=``, ``mean=``, ``std=``).

    Returns:
        ``fedavg``: Δ = w' - w (IEEE subtraction in the states' dtype) of every parameter, with the local schedule
        (:meth:`FederationProtocol.local`); ``fedsgd``: g = (w - w') / η of every trainable parameter
        (:func:`recover_gradients`). K is the reply's ``num-examples``;
        ``meta.weights`` is :data:`GLOBAL_MODEL`; ``meta.notes`` holds :meth:`Reply.notes`.

    Raises:
        InputError: a protocol mismatch (the reply's arrays, its ``num-examples``, the train config against the
            declared protocol, or the update's sign against its kind).
    """
    before = model.state_dict()
    check_reply_arrays(before, after, reply.where)
    lr, k = protocol.round_lr(reply.train_config), reply.num_examples
    facts = {
        "model": model,
        "bn_mode": protocol.bn_mode,
        "weights": GLOBAL_MODEL,
        "notes": reply.notes(protocol, lr),
        "check_sign": check_sign,
        **describe,
    }
    try:
        if protocol.kind == "fedsgd":
            names = [name for name, p in model.named_parameters() if p.requires_grad]
            return SharedUpdate.from_gradients(recover_gradients(before, after, lr, names), k, **facts)
        return SharedUpdate.from_states(before, after, k, local=protocol.local(k, lr), **facts)
    except InputError as err:  # e.g. the sign of the other kind: name the reply
        raise InputError(f"{reply.where}: {err}") from None
