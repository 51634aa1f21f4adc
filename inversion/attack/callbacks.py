"""What the runner's loop (:mod:`.runner`) calls after each step: snapshots, the monitor, the progress bar, checkpoints.

Each callback sees the stepper (:mod:`.steppers`: its best dummies (K, C, H, W), its current ones, the last
step's matching loss(es)) and the step count of the restart(s) in progress (1 after the first step). The
runner calls them in the order given; a KeyboardInterrupt raised in one (Ctrl-C) stops the run as anywhere
else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor
from tqdm.auto import tqdm

from inversion.attack.steppers import Snapshot, Stepper

__all__ = ["Callback", "CheckpointWriter", "Monitor", "ProgressBar", "Snapshots"]


class Callback:
    """Does nothing; a callback overrides what it needs."""

    def on_step(self, stepper: Stepper, step: int) -> None:
        """After every step; ``step`` counts the steps of the restart(s) in progress."""

    def on_skip(self, steps: int) -> None:
        """The restart(s) in progress reached ``stop_loss``: ``steps`` steps (of all restarts) are not run."""

    def close(self) -> None:
        """The run ended (finished, or stopped by Ctrl-C)."""


class Snapshots(Callback):
    """Keeps a copy of the dummies every ``every`` steps (0: never), in ``taken``, for pictures."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.taken: list[Snapshot] = []

    def on_step(self, stepper: Stepper, step: int) -> None:
        if self.every and step % self.every == 0:
            self.taken.extend(stepper.snapshots(step))


class Monitor(Callback):
    """``score`` (e.g. the PSNR against the truth) of the best dummies so far, at the first step, every
    ``every`` steps and at the last; for the user's information only, never used by the optimisation."""

    def __init__(self, score: Callable[[Tensor], float], every: int, max_steps: int) -> None:
        self.score, self.every, self.max_steps = score, every, max_steps
        self.value: float | None = None

    def on_step(self, stepper: Stepper, step: int) -> None:
        if (step - 1) % self.every == 0 or step == self.max_steps:
            self.value = self.score(stepper.best_images())


class ProgressBar(Callback):
    """A tqdm bar over the steps of all restarts (``done`` of ``total`` already run), with the loss and the
    ``monitor``'s value; ``enabled=False`` shows nothing."""

    def __init__(self, total: int, done: int, *, enabled: bool, monitor: Monitor | None = None) -> None:
        self.bar = tqdm(total=total, desc="inversion", unit="step", disable=not enabled)
        self.bar.update(done)
        self.monitor = monitor

    def on_step(self, stepper: Stepper, step: int) -> None:
        if self.bar.disable is False:
            shown = stepper.postfix()
            if self.monitor is not None and self.monitor.value is not None:
                shown["psnr"] = f"{self.monitor.value:.2f}"
            self.bar.set_postfix(**shown, refresh=False)
        self.bar.update(stepper.width)

    def on_skip(self, steps: int) -> None:
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()


class CheckpointWriter(Callback):
    """Calls ``save(path)`` every ``every`` steps."""

    def __init__(self, path: str | Path, every: int, save: Callable[[str | Path], None]) -> None:
        self.path, self.every, self.save = path, every, save

    def on_step(self, stepper: Stepper, step: int) -> None:
        if step % self.every == 0:
            self.save(self.path)
