"""The gradient-inversion attack: optimise dummy inputs until their update matches the shared one.

:class:`Inversion` is the attack's public face, registered as ``"gradient_matching"``
(:mod:`inversion.attack.registry`): the matching problem (:class:`~inversion.attack.problem.AttackProblem`:
the server's model copy, FedSGD / FedAvg matching, priors, span, pixel box) and its runner
(:class:`~inversion.attack.runner.Runner`: one loop over the restarts, sequential or batched
(:mod:`~inversion.attack.steppers`), with checkpoints (:mod:`~inversion.attack.checkpoint`) and callbacks
(:mod:`~inversion.attack.callbacks`)). Per restart: seeded initialisation, Adam (optionally on the sign
of the image gradient) or L-BFGS, an LR schedule driven by the step count, projection onto the valid
pixel box, the best iterate kept, early stop on a loss threshold. The best restart is chosen by its
matching loss; it is returned as an :class:`~inversion.attack.runner.InversionResult` with dummies (K, C, H, W).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from inversion.attack.batched import batched_match
from inversion.attack.callbacks import Callback, CheckpointWriter, Monitor, ProgressBar, Snapshots
from inversion.attack.conv import use_lean_convolutions
from inversion.attack.labels import LabelPlan
from inversion.attack.problem import AttackProblem
from inversion.attack.runner import InversionResult, Runner
from inversion.attack.settings import AttackSettings
from inversion.fl.update import SharedUpdate

__all__ = ["Inversion"]


class Inversion:
    """One attack on one shared update.

    The attack works on its own copy of ``model`` (moved to ``device``): the caller's model is
    neither moved nor changed, and the hooks of the priors (``bn``) live on the copy and are
    removed when :meth:`run` returns. On the CPU the copy's convolutions compute their double
    backward without the unused weight term (:mod:`inversion.attack.conv`; same results). Only
    public data is read: the update's gradients and its metadata (input shape, normalisation,
    batch-norm mode); the batch size comes from the plan.

    Args:
        model: the server's copy of the model.
        update: the shared update.
        plan: the label plan (:func:`~inversion.attack.labels.plan_labels`).
        settings: the optimisation settings.
        bounds: (lower, upper) of valid normalised pixels, each broadcastable to (1, C, 1, 1);
            None: from the update's normalisation (:meth:`UpdateMeta.bounds`).
        image_shape: (C, H, W) of one input; None: the update's ``meta.input_shape``.
        priors: ``{name: weight}`` of the image priors (:func:`priors.build_priors`), or None.
        device: where to run.
        identity: the caller's name for this attack (e.g. a hash of its config), stored in every
            checkpoint; :meth:`load_checkpoint` refuses a checkpoint with another identity.
        local_orders: FedAvg, for an evaluation oracle only: the client's private (⌈E⌉, K) per-epoch orders of
            its samples (:meth:`~inversion.fl.local.LocalTraining.orders`); the dummies, with the plan's labels in
            the client's sample order, take them; with ``settings.local_order="oracle"`` only.

    Attributes:
        problem: the matching problem (:class:`~inversion.attack.problem.AttackProblem`).
        runner: its runner (:class:`~inversion.attack.runner.Runner`); ``runner.batched`` is None when
            the restarts run one after another.
    """

    def __init__(
        self,
        model: nn.Module,
        update: SharedUpdate,
        plan: LabelPlan,
        settings: AttackSettings,
        *,
        bounds: tuple[Tensor, Tensor] | None = None,
        image_shape: Sequence[int] | None = None,
        priors: Mapping[str, float] | None = None,
        device: torch.device | str = "cpu",
        identity: str = "",
        local_orders: Tensor | None = None,
    ) -> None:
        problem = AttackProblem(
            model,
            update,
            plan,
            settings,
            bounds=bounds,
            image_shape=image_shape,
            priors=priors,
            device=device,
            local_orders=local_orders,
        )
        self._set_problem(problem, identity)

    def _set_problem(self, problem: AttackProblem, identity: str) -> None:
        """Attack ``problem``: set :attr:`problem` and its :attr:`runner` (batched restarts where
        :func:`~inversion.attack.batched.batched_match` allows them; with sequential ones on the CPU, the lean
        convolutions of the problem's model copy, measured faster there: :mod:`inversion.attack.conv`)."""
        self.problem = problem
        batched = batched_match(problem)
        if problem.device.type == "cpu" and batched is None:
            use_lean_convolutions(problem.model)
        self.runner = Runner(problem, batched, identity)

    @property
    def shape(self) -> tuple[int, ...]:
        """(K, C, H, W) of the dummies."""
        return self.problem.shape

    def save_checkpoint(self, path: str | Path) -> None:
        """Write the resumable state atomically (temp file, then rename)."""
        self.runner.save_checkpoint(path)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the state written by :meth:`save_checkpoint` (tensors and plain data only).

        Raises:
            ValueError: the file is unreadable (truncated, pickled objects), not a checkpoint of this
                version, incomplete, made by an attack with another ``identity``, or for another shape.
        """
        self.runner.load_checkpoint(path)

    def run(
        self,
        *,
        progress: bool = True,
        monitor: Callable[[Tensor], float] | None = None,
        monitor_every: int = 50,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 0,
        snapshot_every: int = 0,
    ) -> InversionResult:
        """Run (or continue, after :meth:`load_checkpoint`) all restarts.

        Args:
            progress: show a tqdm bar (step, loss and the ``monitor`` value).
            monitor: for the user's information only, e.g. the PSNR against the truth;
                called every ``monitor_every`` steps, never used by the optimisation.
            checkpoint, checkpoint_every: write the state to ``checkpoint`` every N steps.
            snapshot_every: keep a copy of the dummies every N steps (for pictures).

        Returns:
            the best restart's best iterate. Ctrl-C stops early and returns the best so far.
        """
        s = self.problem.settings
        snapshots = Snapshots(snapshot_every)
        watch = None if monitor is None else Monitor(monitor, monitor_every, s.max_steps)
        total, done = s.max_steps * s.restarts, self.runner.steps_done()
        callbacks: list[Callback] = [snapshots, *([] if watch is None else [watch])]
        callbacks.append(ProgressBar(total, done, enabled=progress, monitor=watch))
        if checkpoint is not None and checkpoint_every:
            callbacks.append(CheckpointWriter(checkpoint, checkpoint_every, self.runner.save_checkpoint))
        return dataclasses.replace(self.runner.run(callbacks), snapshots=snapshots.taken)
