"""Steppers: one optimisation step of the restart(s) in progress, for the runner's loop (:mod:`.runner`).

- :class:`SequentialStepper`: one restart, (K, ...) dummies and learnable label logits; Adam (optionally
  on the sign of the image gradient) or L-BFGS with a closure.
- :class:`BatchedStepper`: all R restarts as one batched problem, (R, K, ...) dummies
  (:mod:`inversion.attack.batched`); Adam, signed or not; a restart that reaches ``stop_loss`` is frozen.

A stepper owns the optimiser over the leaves it moves and keeps its state object
(:class:`~inversion.attack.state.RestartState` / :class:`~inversion.attack.state.BatchState`) current:
``x`` (a detached alias of the optimised leaf) and the best iterate, which is the iterate with the lowest
matching loss, checked before the optimiser moves it. The runner sets the learning rate and counts steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from inversion.attack.batched import BatchedMatch
from inversion.attack.order_free import REORDER_EVERY
from inversion.attack.problem import AttackProblem
from inversion.attack.settings import AttackSettings
from inversion.attack.state import BatchState, RestartState

__all__ = ["BatchedStepper", "SequentialStepper", "Stepper", "make_optimizer"]

Snapshot = tuple[int, int, Tensor]
"""(restart, step, dummies (K, C, H, W) on the CPU)."""


def make_optimizer(settings: AttackSettings, leaves: Sequence[Tensor]) -> torch.optim.Optimizer:
    """``settings.optimizer`` over ``leaves`` at the base learning rate."""
    if settings.optimizer == "lbfgs":
        return torch.optim.LBFGS(leaves, lr=settings.lr)
    return torch.optim.Adam(leaves, lr=settings.lr, fused=True)


class Stepper(Protocol):
    """What the runner and its callbacks use of a stepper."""

    optimizer: torch.optim.Optimizer
    width: int  # restarts advanced per step

    @property
    def state(self) -> RestartState | BatchState: ...
    def step(self) -> None: ...  # one step of the restart(s)
    def stopped(self) -> bool: ...  # the last step's iterate reached stop_loss (all R of them, batched)
    def best_images(self) -> Tensor: ...  # the best dummies so far (K, C, H, W), on the CPU
    def snapshots(self, step: int) -> list[Snapshot]: ...  # the current dummies
    def postfix(self) -> dict[str, object]: ...  # for the progress bar: the restart(s) and the last step's loss


class SequentialStepper:
    """One restart at a time: ``x`` (K, C, H, W) or span coefficients (K, r), label logits if learnable.

    Attributes:
        matching: the matching loss of the iterate before the last step.
    """

    width = 1

    def __init__(self, problem: AttackProblem, state: RestartState) -> None:
        self.problem, self.state = problem, state
        self.x = state.x.to(problem.device).requires_grad_(True)
        logits = state.label_logits
        self.logits = None if logits is None else logits.to(problem.device).requires_grad_(True)
        self.leaves = [self.x] if self.logits is None else [self.x, self.logits]
        self.optimizer = make_optimizer(problem.settings, self.leaves)
        if state.optimizer is not None:
            self.optimizer.load_state_dict(state.optimizer)
        self.matching = float("inf")
        if problem.layout is not None:  # the restart's own mini-batch orders: resumed, or the layout's first
            problem.orders = state.local_orders if state.local_orders is not None else problem.layout.orders

    def step(self) -> None:
        """One optimisation step of Adam, or of L-BFGS with as many evaluations as its line search takes.

        The iterate is copied as the restart's best when its matching loss is the lowest so far
        (checked at the first evaluation, before the optimiser moves it).
        """
        problem, st, x, logits = self.problem, self.state, self.x, self.logits
        record: dict[str, float] = {}
        if (
            problem.searching
            and st.step
            and st.step % REORDER_EVERY == 0
            and st.step <= problem.settings.max_steps // 4
        ):
            problem.reorder(x, logits, st.step, st.restart)
            st.local_orders = problem.orders

        def closure() -> Tensor:
            images = problem.images(x)
            total, matching, _ = problem.objective(images, logits)
            if not record:
                record["matching"] = float(matching.detach())
                if record["matching"] < st.best_loss:
                    st.best_loss = record["matching"]
                    st.best_x = problem.reconstruction(images.detach()).cpu().clone()
                    st.best_logits = None if logits is None else logits.detach().cpu().clone()
            # gradients w.r.t. the dummies only: not the (unused) second-order ones of the model's parameters
            grads = torch.autograd.grad(total, self.leaves)
            if problem.settings.signed:  # of the images only, not of the label logits
                grads[0].sign_()
            for leaf, grad in zip(self.leaves, grads):
                leaf.grad = grad
            return total.detach()

        if problem.settings.optimizer == "lbfgs":
            self.optimizer.step(closure)  # type: ignore[arg-type]  # (torch types the closure's loss as a float)
        else:
            closure()
            self.optimizer.step()
        if problem.settings.boxed:
            problem.project(x)
        st.x, st.label_logits = x.detach(), None if logits is None else logits.detach()
        self.matching = record["matching"]

    def stopped(self) -> bool:
        stop = self.problem.settings.stop_loss
        return stop is not None and self.matching <= stop

    def best_images(self) -> Tensor:
        return self.state.best_x

    def snapshots(self, step: int) -> list[Snapshot]:
        images = self.problem.reconstruction(self.problem.images(self.x.detach()))
        return [(self.state.restart, step, images.cpu().clone())]

    def postfix(self) -> dict[str, object]:
        return {"restart": self.state.restart, "loss": f"{self.matching:.4g}"}


class BatchedStepper:
    """All R restarts at once: ``x`` (R, K, C, H, W) or (R, K, r); the matching losses (R,) from ``match``.

    Attributes:
        matching: the matching losses (R,) of the iterates before the last step.
    """

    def __init__(self, problem: AttackProblem, match: BatchedMatch, state: BatchState) -> None:
        self.problem, self.match, self.state = problem, match, state
        self.width = state.width
        self.x = state.x.to(problem.device).requires_grad_(True)
        state.best_x, state.best_loss, state.done = (
            t.to(problem.device) for t in (state.best_x, state.best_loss, state.done)
        )
        self.optimizer = make_optimizer(problem.settings, [self.x])
        if state.optimizer is not None:
            self.optimizer.load_state_dict(state.optimizer)
        self.matching = state.best_loss

    def step(self) -> None:
        """One step of every restart (best iterates kept); a restart at or below ``stop_loss`` stays where it is."""
        problem, st, x, s = self.problem, self.state, self.x, self.problem.settings
        images = problem.images(x)
        matching = self.match(images)
        total = matching.sum()
        if (
            problem.priors is not None
        ):  # batchable priors only (batching_obstacle): batch means, so R x the mean over all R·K
            total = total + len(images) * problem.priors(images.flatten(0, 1), generator=problem.generator)[0]
        matching = matching.detach()
        better = matching < st.best_loss  # no boolean indexing: nothing here waits for the GPU
        st.best_loss = torch.where(better, matching, st.best_loss)
        st.best_x = torch.where(better.view(-1, *[1] * len(problem.shape)), images.detach(), st.best_x)
        (grad,) = torch.autograd.grad(total, [x])
        grad = grad.contiguous()  # vmap's gradient may come back strided; fused Adam reads it as laid out like x
        if s.signed:
            grad.sign_()
        x.grad = grad
        if s.stop_loss is None:
            self._move()
        else:
            before = x.detach().clone()
            self._move()
            st.done |= matching <= s.stop_loss
            with torch.no_grad():  # a restart at or below stop_loss stays at that iterate
                x.copy_(torch.where(st.done.view(-1, *[1] * len(problem.leaf_shape)), before, x))
        st.x, self.matching = x.detach(), matching

    def _move(self) -> None:
        """The optimiser's step, then the projection onto the pixel box (boxed attacks)."""
        self.optimizer.step()
        if self.problem.settings.boxed:
            self.problem.project(self.x)

    def stopped(self) -> bool:
        return self.problem.settings.stop_loss is not None and bool(self.state.done.all())

    def best_images(self) -> Tensor:
        return self.state.best_x[int(self.state.best_loss.argmin())].cpu()

    def snapshots(self, step: int) -> list[Snapshot]:
        images = self.problem.images(self.x.detach()).cpu()
        return [(r, step, images[r].clone()) for r in range(self.width)]

    def postfix(self) -> dict[str, object]:
        return {"restarts": self.width, "loss": f"{float(self.matching.min()):.4g}"}
