"""The attack's one optimisation loop, over restarts run one after another or batched.

:class:`Runner` takes the restart(s) to run next from its :class:`~inversion.attack.state.RunState`,
hands them to a stepper (:mod:`.steppers`: one restart, or all R batched) and loops: the learning
rate of the schedule (:func:`lr_factor`), one step, the step counts, the callbacks (:mod:`.callbacks`:
snapshots, monitor, progress bar, checkpoints), an early stop once ``stop_loss`` is reached. A finished
restart's best iterate joins the finished ones; the best restart (lowest matching loss) is the result,
an :class:`InversionResult` with its dummies (K, C, H, W). Ctrl-C stops early and returns the best so far.

The whole state lives in plain tensors and numbers, so a checkpoint (:mod:`.checkpoint`) resumes
bit-identically on the CPU for a fixed thread count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from inversion.attack.batched import BatchedMatch
from inversion.attack.callbacks import Callback
from inversion.attack.checkpoint import read_checkpoint, write_checkpoint
from inversion.attack.problem import AttackProblem
from inversion.attack.state import BatchState, RestartState, RunState
from inversion.attack.steppers import BatchedStepper, SequentialStepper, Stepper

__all__ = ["InversionResult", "Runner", "lr_factor"]


def lr_factor(schedule: str, step: int, max_steps: int) -> float:
    """Multiplier of the base LR at ``step``: ``step`` decays x0.1 at 3/8, 5/8 and 7/8 of the budget."""
    if schedule == "step":
        return 0.1 ** sum(step >= math.floor(max_steps * f) for f in (3 / 8, 5 / 8, 7 / 8))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max_steps))
    return 1.0


@dataclass
class InversionResult:
    """What the attack returns.

    Attributes:
        images: the best reconstruction, normalised, (K, C, H, W), on the CPU.
        labels: the hard labels used/learned, (K,).
        loss: its matching loss.
        restart: the index of the restart it came from.
        restart_losses: the best matching loss of every restart run, in order (with Ctrl-C, the
            interrupted restart's best so far is the last entry).
        steps: optimisation steps run in total (all restarts, including those of earlier sessions
            when resumed from a checkpoint).
        seconds: wall time of the optimisation (all sessions).
        interrupted: True when stopped early by Ctrl-C.
        snapshots: (restart, step, images) kept every ``snapshot_every`` steps.
        span: the first-layer span constraint's record (layer, rank r, dimension D), None when not used.
    """

    images: Tensor
    labels: Any
    loss: float
    restart: int
    restart_losses: list[float]
    steps: int
    seconds: float
    interrupted: bool = False
    snapshots: list[tuple[int, int, Tensor]] = field(default_factory=list)
    span: dict[str, Any] | None = None


class Runner:
    """Runs (or continues, after :meth:`load_checkpoint`) all restarts of ``problem``.

    Args:
        problem: the matching problem.
        batched: the batched matching of all restarts (:func:`~inversion.attack.batched.batched_match`),
            or None to run them one after another.
        identity: the caller's name for this attack, stored in every checkpoint;
            :meth:`load_checkpoint` refuses a checkpoint with another identity.
    """

    def __init__(self, problem: AttackProblem, batched: BatchedMatch | None, identity: str = "") -> None:
        self.problem, self.batched, self.identity = problem, batched, identity
        self.state = RunState()
        self._stepper: Stepper | None = None  # the stepper of the restart(s) in progress, while it steps
        self._session: tuple[float, float] | None = None  # (seconds before this run() call, its start time)

    def steps_done(self) -> int:
        """Steps of all restarts already behind (an early-stopped restart's remaining ones counted)."""
        run = self.state
        return run.restart * self.problem.settings.max_steps + (
            0 if run.current is None else run.current.step * run.current.width
        )

    def seconds(self) -> float:
        """Time spent by the attack: earlier sessions' plus, while :meth:`run` runs, this one's so far."""
        if self._session is None:
            return self.state.seconds
        before, start = self._session
        return before + time.perf_counter() - start

    def run(self, callbacks: Sequence[Callback] = ()) -> InversionResult:
        """Run the restarts not yet finished; the best restart's best iterate (``snapshots`` left empty)."""
        run, interrupted = self.state, False
        self._session = (run.seconds, time.perf_counter())
        try:
            with self.problem.attached():
                while (stepper := self._next_stepper()) is not None:
                    self._advance(stepper, callbacks)
                    self.close_restarts(run.restart + stepper.width)
        except KeyboardInterrupt:
            interrupted = True
            if self._stepper is not None:  # keep the optimiser's state with the restart's, to resume
                self._stepper.state.optimizer = self._stepper.optimizer.state_dict()
        finally:
            self._stepper = None
            for callback in callbacks:
                callback.close()
            run.seconds, self._session = self.seconds(), None
        runs = list(run.finished)
        if interrupted and run.current is not None:  # the interrupted restart's (or batch's) best so far
            runs += [done for done in run.current.finished() if math.isfinite(done.loss)]
        if not runs:
            raise KeyboardInterrupt("interrupted before the first step finished")
        best = min(runs, key=lambda done: done.loss)
        return InversionResult(
            images=best.images.detach().cpu(),
            labels=self.problem.labels(best.label_logits),
            loss=best.loss,
            restart=best.restart,
            restart_losses=[done.loss for done in runs],
            steps=run.steps,
            seconds=run.seconds,
            interrupted=interrupted,
            span=None if self.problem.span is None else self.problem.span.record(),
        )

    def _next_stepper(self) -> Stepper | None:
        """The stepper of the restart(s) to run next (the one in progress, or fresh ones); None when all have run."""
        run, problem = self.state, self.problem
        restarts = problem.settings.restarts
        if run.restart >= restarts:
            return None
        if self.batched is not None:
            if not isinstance(run.current, BatchState):
                run.current = BatchState.stack([problem.fresh_restart(r) for r in range(restarts)])
            return BatchedStepper(problem, self.batched, run.current)
        if not isinstance(run.current, RestartState):
            run.current = problem.fresh_restart(run.restart)
        return SequentialStepper(problem, run.current)

    def _advance(self, stepper: Stepper, callbacks: Sequence[Callback]) -> None:
        """The loop: step the restart(s) of ``stepper`` to ``max_steps``, or until they reach ``stop_loss``."""
        s, run, state = self.problem.settings, self.state, stepper.state
        self._stepper = stepper
        for step in range(state.step, s.max_steps):
            for group in stepper.optimizer.param_groups:
                group["lr"] = s.lr * lr_factor(s.schedule, step, s.max_steps)
            stepper.step()
            state.step, run.steps = step + 1, run.steps + stepper.width
            for callback in callbacks:
                callback.on_step(stepper, step + 1)
            if stepper.stopped():
                for callback in callbacks:
                    callback.on_skip((s.max_steps - step - 1) * stepper.width)
                break
        self._stepper = None

    def close_restarts(self, following: int) -> None:
        """File the restart(s) just run among the finished ones; the next to run is ``following``."""
        run = self.state
        current, run.current = run.current, None
        run.finished.extend([] if current is None else current.finished())
        run.restart = following

    def save_checkpoint(self, path: str | Path) -> None:
        """Write the resumable state atomically (:func:`~inversion.attack.checkpoint.write_checkpoint`)."""
        if self._stepper is not None:  # the live optimiser's state
            self._stepper.state.optimizer = self._stepper.optimizer.state_dict()
        self.state.seconds = self.seconds()
        write_checkpoint(path, self.state, identity=self.identity, generator=self.problem.generator)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the state written by :meth:`save_checkpoint` (ValueError: see
        :func:`~inversion.attack.checkpoint.read_checkpoint`)."""
        problem = self.problem
        leaf_shape = problem.leaf_shape if self.batched is None else (problem.settings.restarts, *problem.leaf_shape)
        state, generator = read_checkpoint(
            path,
            identity=self.identity,
            batched=self.batched is not None,
            leaf_shape=leaf_shape,
            image_shape=problem.shape,
        )
        problem.generator.set_state(generator)
        self.state = state
