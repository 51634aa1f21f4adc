"""The attack's settings: one dataclass that is both the ``attack`` section of the configs and the library's type."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, cast

import torch

from inversion.attack.labels import label_modes
from inversion.attack.objectives import OBJECTIVES
from inversion.attack.order_free import LOCAL_ORDERS
from inversion.attack.span import SPAN_MODES
from inversion.utils.choices import Choice, choices, coerce
from inversion.utils.errors import InputError

__all__ = [
    "BATCH_RESTART_MODES",
    "DEVICES",
    "INITS",
    "LOCAL_ORDERS",
    "OPTIMIZERS",
    "SCHEDULES",
    "AttackSettings",
    "BatchRestarts",
    "Device",
    "Init",
    "LocalOrder",
    "Objective",
    "Optimizer",
    "Schedule",
    "Span",
    "resolve_device",
]

INITS = ("randn", "rand", "zeros")
OPTIMIZERS = ("adam", "lbfgs")
SCHEDULES = ("step", "cosine", "none")
DEVICES = ("auto", "cpu", "cuda")
BATCH_RESTART_MODES = ("auto", "always", "never")

if TYPE_CHECKING:  # a type made at run time is no type to mypy; its members are strings, so a field holds a str
    Objective = str
    Optimizer = str
    Schedule = str
    Init = str
    Device = str
    Span = str
    BatchRestarts = str
    LocalOrder = str
else:  # the fields' types for omegaconf, which checks a config's value against the members
    Objective = choices("Objective", OBJECTIVES)
    Optimizer = choices("Optimizer", OPTIMIZERS)
    Schedule = choices("Schedule", SCHEDULES)
    Init = choices("Init", INITS)
    Device = choices("Device", DEVICES)
    Span = choices("Span", SPAN_MODES)
    BatchRestarts = choices("BatchRestarts", BATCH_RESTART_MODES)
    LocalOrder = choices("LocalOrder", LOCAL_ORDERS)


@dataclass
class AttackSettings:
    """How the gradient-inversion attack runs (see :mod:`inversion.attack`).

    Every choice field takes its string (``AttackSettings(objective="l2")``); the configs' ``attack``
    section is this class, so a config key or value the class does not accept is rejected.

    Attributes:
        method: the attack, a name in its registry (:func:`~inversion.attack.registry.attack_names`, including
            those registered at run time): ``gradient_matching`` (this module's settings drive it).
        labels: the label mode (:func:`~inversion.attack.labels.label_modes`): a registered label-restoration
            method (:func:`label_restore.available_methods`, including those registered at run time), ``oracle``,
            ``joint`` or ``shared``.
        objective: ``cosine`` (Inverting Gradients) or ``l2`` (DLG).
        layer_weights: parameter-name prefix -> weight in the objective; None: all 1.
        parameters: names or dotted prefixes of the parameters to match; None: every shared gradient.
        optimizer: ``adam`` or ``lbfgs``; lr: its base learning rate; signed: Adam on the sign of
            the image gradient.
        boxed: project the dummies onto the valid pixel range after each step.
        schedule: ``step`` (x0.1 at 3/8, 5/8, 7/8 of ``max_steps``), ``cosine`` or ``none``.
        max_steps: steps per restart; restarts: independent starts, the best matching loss wins.
        batch_restarts: run the restarts as one batched problem (:mod:`inversion.attack.batched`): ``auto``
            on a CUDA device where it applies, ``always`` (an error where it does not apply), ``never``.
        init: ``randn``, ``rand`` (uniform in the pixel box) or ``zeros``.
        span: the first-layer span constraint (:mod:`inversion.attack.span`): ``auto`` uses it where the
            model's first trainable layer is linear on the flattened input, ``always`` insists (an error where
            it does not apply), ``never`` turns it off.
        local_order: FedAvg: how the dummies are laid into the client's local mini-batches
            (:mod:`inversion.attack.order_free`): ``in_order`` (in the plan's order, every epoch), ``free`` (no
            order assumed: the labels' assignment to positions is learned, and a shuffling client's epochs get a
            dummy set each), ``auto`` (``free`` when the client shuffles, else ``in_order``), ``oracle`` (the
            client's private orders, which an experiment driver hands over: an upper bound, like oracle labels).
        epoch_consistency: order-free over several local epochs, the weight of the term that keeps the epochs'
            dummy sets equal (their mean squared distance after matching, per normalised pixel).
        stop_loss: stop a restart once the matching loss is this low; None: never.
        seed: seeds the initialisations and the priors' randomness.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        checkpoint_every: steps between checkpoints (0: never); snapshot_every: steps between
            kept copies of the dummies, for pictures (0: never); monitor_every: steps between
            progress-bar updates of the monitored score.
        memory_check: refuse, before it starts, an attack whose estimated memory exceeds what the device
            has free (:func:`inversion.utils.memory.attack_memory`); false: run it anyway.
    """

    method: str = "gradient_matching"
    labels: str = "ilrg"
    objective: Objective = "cosine"
    layer_weights: Optional[Dict[str, float]] = None
    parameters: Optional[List[str]] = None
    optimizer: Optimizer = "adam"
    lr: float = 0.1
    signed: bool = True
    boxed: bool = True
    schedule: Schedule = "step"
    max_steps: int = 2000
    restarts: int = 1
    batch_restarts: BatchRestarts = "auto"
    init: Init = "randn"
    span: Span = "auto"
    local_order: LocalOrder = "auto"
    epoch_consistency: float = 0.1
    stop_loss: Optional[float] = None
    seed: int = 0
    device: Device = "auto"
    checkpoint_every: int = 500
    snapshot_every: int = 0
    monitor_every: int = 50
    memory_check: bool = True

    def __post_init__(self) -> None:
        from inversion.attack.registry import attack_names  # here: the registry imports the attacks, which import this

        if self.method not in attack_names():
            raise InputError(f"unknown attack {self.method!r}; choose one of {', '.join(attack_names())}", "method")
        self.method = str(self.method)
        modes = label_modes()
        if self.labels not in modes:
            raise InputError(f"unknown label mode {self.labels!r}; choose one of {', '.join(modes)}")
        self.labels = str(self.labels)
        for name, kind in (
            ("objective", Objective),
            ("optimizer", Optimizer),
            ("schedule", Schedule),
            ("init", Init),
            ("device", Device),
            ("span", Span),
            ("batch_restarts", BatchRestarts),
            ("local_order", LocalOrder),
        ):
            setattr(self, name, coerce(cast(type[Choice], kind), getattr(self, name), name))  # str to mypy only
        if self.max_steps < 1 or self.restarts < 1:
            raise InputError(f"max_steps and restarts must be >= 1, got {self.max_steps} and {self.restarts}")
        if not 0 <= self.epoch_consistency < math.inf:
            raise InputError(f"must be >= 0 and finite, got {self.epoch_consistency}", "epoch_consistency")
        if not 0 < self.lr < math.inf:
            raise InputError(f"lr must be > 0 and finite, got {self.lr}")
        if self.checkpoint_every < 0 or self.snapshot_every < 0:
            raise InputError("checkpoint_every and snapshot_every must be >= 0 (0: never)")
        if self.monitor_every < 1:
            raise InputError(f"monitor_every must be >= 1, got {self.monitor_every}")
        if self.optimizer == "lbfgs" and self.signed:
            raise InputError("signed gradients are an Adam option; set signed=false with optimizer=lbfgs")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a ValueError."""
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda was asked for but no CUDA device is available; use auto or cpu")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")
