"""Batched restarts: R independent restarts of the attack as one batched problem.

The R dummy batches are stacked, (R, K, C, H, W), and the model runs on all of them in one
vectorised forward (``torch.func.vmap``) with R stacked *views* of its parameters (no copies), so
that one backward pass gives every restart its own parameter gradient, (R, *shape) per parameter;
the matching loss of each restart is then computed from its own gradient
(:meth:`~inversion.attack.objectives.GradientMatcher.batched`). Since the restarts share nothing,
the gradient of the summed losses with respect to restart r's dummies is that of restart r's own
loss, and Adam's per-element updates on the stacked tensor are R independent Adams: the same
optimisation as R sequential runs, with R times the work per kernel (fewer, larger kernels on a GPU).

:func:`batching_obstacle` says when this does not apply: FedAvg updates (their unrolled local steps),
learnable labels, L-BFGS (its line search would couple the restarts), priors that are not batchable
(:attr:`priors.PriorSpec.batchable`: ``bn`` and ``augment``, with model hooks and random augmentations
per forward), and train-mode batch norm. :func:`batched_match` builds the batched matching of an
attack's restarts where its ``batch_restarts`` setting asks for it and it applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from inversion.attack.labels import LabelPlan, batch_loss
from inversion.attack.objectives import GradientMatcher
from inversion.utils.errors import InputError
from priors import prior_spec

if TYPE_CHECKING:
    from inversion.attack.problem import AttackProblem
    from inversion.attack.settings import AttackSettings

__all__ = ["BatchedMatch", "batched_match", "batching_obstacle"]


def batching_obstacle(
    settings: AttackSettings, plan: LabelPlan, priors: Mapping[str, float], *, fedavg: bool, train_mode_batch_norm: bool
) -> str | None:
    """Why the restarts of this attack cannot run batched, or None when they can."""
    if fedavg:
        return "a FedAvg update (its local steps are unrolled per restart)"
    if plan.learnable:
        return f"learnable labels (label mode {plan.mode})"
    if settings.optimizer != "adam":
        return "L-BFGS (its line search would couple the restarts)"
    unbatchable = sorted(
        name for name, weight in priors.items() if float(weight) > 0 and not prior_spec(name).batchable
    )
    if unbatchable:
        return f"the {' and '.join(unbatchable)} prior(s)"
    if train_mode_batch_norm:
        return "train-mode batch norm (batch statistics per forward)"
    return None


class BatchedMatch:
    """The matching losses (R,) of R stacked dummy batches against one shared gradient.

    Args:
        model: the attacked model (its parameters are read, not changed).
        names: the matched parameters, in ``matcher``'s order.
        plan: a label plan with fixed labels.
        matcher: the matching objective.
        restarts: R.
    """

    def __init__(
        self, model: nn.Module, names: Sequence[str], plan: LabelPlan, matcher: GradientMatcher, restarts: int
    ) -> None:
        named = dict(model.named_parameters())
        # R stacked views of each matched parameter (stride 0: no memory); a leaf of its own, so that the
        # gradient with respect to it is per restart
        self.stacked = {n: named[n].detach().expand(restarts, *named[n].shape).requires_grad_(True) for n in names}
        self.names, self.matcher, self.model, self.plan = list(names), matcher, model, plan

        def loss(params: dict[str, Tensor], images: Tensor) -> Tensor:
            return batch_loss(functional_call(self.model, params, (images,)), self.plan, None)

        self._losses = vmap(loss, in_dims=(0, 0))

    def __call__(self, images: Tensor) -> Tensor:
        """Matching losses (R,) of dummies (R, K, C, H, W), differentiable with respect to them."""
        losses = self._losses(self.stacked, images)
        gradients = torch.autograd.grad(losses.sum(), [self.stacked[n] for n in self.names], create_graph=True)
        return self.matcher.batched(gradients)


def batched_match(problem: AttackProblem) -> BatchedMatch | None:
    """The batched matching of ``problem``'s restarts where ``batch_restarts`` asks for it and it applies, else None.

    Raises:
        ValueError: ``batch_restarts=always`` where batching does not apply (the message says why).
    """
    settings = problem.settings
    mode = str(settings.batch_restarts)
    if settings.restarts == 1 or mode == "never" or (mode == "auto" and problem.device.type != "cuda"):
        return None
    obstacle = batching_obstacle(
        settings,
        problem.plan,
        problem.prior_weights,
        fedavg=problem.local is not None,
        train_mode_batch_norm=problem.bn_mode == "train"
        and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in problem.model.modules()),
    )
    if obstacle is None:
        return BatchedMatch(problem.model, problem.names, problem.plan, problem.matcher, settings.restarts)
    if mode == "always":
        raise InputError(
            f"attack.batch_restarts=always: restarts cannot run batched with {obstacle}; "
            "set attack.batch_restarts=auto or never"
        )
    return None
