"""The attack's resumable state, typed: the run's, one restart's, and that of R restarts run as one batch.

- :class:`FinishedRestart`: a restart's outcome: its index, best matching loss, best dummies (K, C, H, W)
  and label logits ((K, C) joint, (C,) shared, None for fixed labels).
- :class:`RestartState`: one restart in progress (restarts run one after another): the optimised
  variable ``x``, the dummies (K, C, H, W) or their span coefficients (K, r)
  (:mod:`inversion.attack.span`); the learnable label logits; the best iterate so far; the step count
  and the optimiser's state to resume from.
- :class:`BatchState`: all R restarts in progress as one batched problem (:mod:`inversion.attack.batched`):
  ``x`` (R, K, ...), ``best_x`` (R, K, C, H, W), ``best_loss`` (R,), ``done`` (R,) (reached ``stop_loss``).
- :class:`RunState`: the finished restarts, the next restart to run, the one(s) in progress, the step
  count and the time spent over all sessions.

Each is plain tensors, numbers and lists, and converts to and from the checkpoint's flat payload
(:mod:`inversion.attack.checkpoint`), whose keys have stayed the same since version 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = ["BatchState", "FinishedRestart", "RestartState", "RunState"]


def _cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, Tensor) else value


class FinishedRestart(NamedTuple):
    """A restart's outcome (in a checkpoint: the list ``[restart, loss, images, label_logits]``)."""

    restart: int
    loss: float
    images: Tensor
    label_logits: Tensor | None


@dataclass
class RestartState:
    """One restart in progress; ``best_x`` (K, C, H, W) and ``best_logits`` live on the CPU."""

    restart: int
    x: Tensor
    label_logits: Tensor | None
    best_x: Tensor
    best_logits: Tensor | None
    best_loss: float = math.inf
    step: int = 0
    optimizer: dict[str, Any] | None = None
    local_orders: Tensor | None = None  # searched mini-batch orders of an order-free layout (.order_free)

    width = 1
    """Restarts advanced per step."""

    def finished(self) -> list[FinishedRestart]:
        """This restart's best so far, as a finished one."""
        return [FinishedRestart(self.restart, float(self.best_loss), self.best_x, self.best_logits)]

    def payload(self) -> dict[str, Any]:
        """Its checkpoint keys (``restart`` is the run's), tensors on the CPU."""
        keys = ("step", "x", "label_logits", "optimizer", "best_x", "best_loss", "best_logits", "local_orders")
        return {key: _cpu(getattr(self, key)) for key in keys}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> RestartState:
        """The restart of a checked payload; label logits and the optimiser's state may be None."""
        optional: dict[str, Any] = {
            key: payload.get(key) for key in ("label_logits", "best_logits", "optimizer", "local_orders")
        }
        return cls(**{key: payload[key] for key in ("restart", "x", "best_x", "best_loss", "step")}, **optional)


@dataclass
class BatchState:
    """All R restarts in progress, stacked along a first dimension R."""

    x: Tensor
    best_x: Tensor
    best_loss: Tensor
    done: Tensor
    step: int = 0
    optimizer: dict[str, Any] | None = None

    @property
    def width(self) -> int:
        """Restarts advanced per step: R."""
        return len(self.best_loss)

    @classmethod
    def stack(cls, fresh: list[RestartState]) -> BatchState:
        """The R restarts ``fresh`` (at step 0) as one batch."""
        return cls(
            x=torch.stack([f.x for f in fresh]),
            best_x=torch.stack([f.best_x for f in fresh]),
            best_loss=torch.full((len(fresh),), math.inf),
            done=torch.zeros(len(fresh), dtype=torch.bool),
        )

    def finished(self) -> list[FinishedRestart]:
        """The R restarts' bests so far, as finished ones (fixed labels: no label logits)."""
        return [
            FinishedRestart(r, float(loss), self.best_x[r].cpu(), None)
            for r, loss in enumerate(self.best_loss.tolist())
        ]

    def payload(self) -> dict[str, Any]:
        """Its checkpoint keys, tensors on the CPU; ``batched`` marks them (the label keys are None)."""
        running = {key: _cpu(getattr(self, key)) for key in ("step", "x", "optimizer", "best_x", "best_loss", "done")}
        return {"batched": True, "label_logits": None, "best_logits": None, **running}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> BatchState:
        """The batch of a checked payload; the optimiser's state may be None."""
        kept = {key: payload[key] for key in ("x", "best_x", "best_loss", "done", "step")}
        return cls(**kept, optimizer=payload.get("optimizer"))


@dataclass
class RunState:
    """The whole attack: ``restart`` is the first restart not finished; ``current`` the one(s) in progress."""

    finished: list[FinishedRestart] = field(default_factory=list)
    restart: int = 0
    steps: int = 0
    seconds: float = 0.0
    current: RestartState | BatchState | None = None

    def payload(self) -> dict[str, Any]:
        """The checkpoint's state keys (without format, version, identity and generator)."""
        run = {
            "finished": [list(done) for done in self.finished],
            "restart": self.restart,
            "step": 0,
            "steps": self.steps,
            "seconds": self.seconds,
        }
        return run if self.current is None else {**run, **self.current.payload()}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> RunState:
        """The state of a checked payload (:func:`inversion.attack.checkpoint.read_checkpoint`)."""
        current = None
        if "x" in payload:
            current = (BatchState if payload.get("batched") else RestartState).from_payload(payload)
        return cls(
            finished=[FinishedRestart(*done) for done in payload["finished"]],
            restart=payload["restart"],
            steps=payload["steps"],
            seconds=payload["seconds"],
            current=current,
        )
