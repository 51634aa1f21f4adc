"""The gradient-matching problem: what the attack minimises, over what, and where it starts. No loop.

The server's copy of the model computes, for a dummy batch ``x`` (K, C, H, W) and the label
plan, the update the client would have sent: for FedSGD the gradient of its loss (mean
cross-entropy); for FedAvg the weight delta of its local SGD steps, unrolled differentiably on the
dummies (Inverting Gradients' multi-step attack; the dummies fall into the local mini-batches in the
order of the plan's labels). The objective is the matching loss of that update against the shared one
plus the weighted image priors. The optimised variable is the dummies themselves, or, under the
first-layer span constraint (:mod:`inversion.attack.span`), their coefficients (K, r) in the span;
boxed attacks project it onto the valid pixel box after each step.

With ``bn_mode="train"`` the model runs its batch-norm layers on the dummies' batch statistics, as the
client did, but their running statistics are frozen (momentum 0): they are what the ``bn`` prior
compares against, and must not drift towards the dummies' own statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call

from inversion.attack.labels import LabelPlan, batch_loss
from inversion.attack.objectives import GradientMatcher
from inversion.attack.settings import AttackSettings
from inversion.attack.span import FirstLayerSpan, span_for_update
from inversion.attack.state import RestartState
from inversion.fl.local import unroll_local_training
from inversion.fl.update import SharedUpdate
from inversion.utils.errors import InputError
from priors import ImagePriors, build_priors

__all__ = ["AttackProblem"]


def _select(names: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    if wanted is None:
        return list(names)
    chosen = [n for n in names if any(n == w or n.startswith(w + ".") for w in wanted)]
    if not chosen:
        raise InputError(f"attack.parameters {list(wanted)} select none of the shared gradients ({list(names)[:5]}...)")
    return chosen


class AttackProblem:
    """The matching problem of one shared update, on the attack's own copy of the model.

    The copy (moved to ``device``) leaves the caller's model neither moved nor changed. Only public
    data is read: the update's gradients and its metadata (input shape, normalisation, batch-norm
    mode, FedAvg schedule); the batch size comes from the plan. Arguments as
    :class:`~inversion.attack.optimize.Inversion`'s.

    Attributes:
        shape: (K, C, H, W) of the dummies; leaf_shape: of the optimised variable ((K, r) in the span).
        priors: the built image priors while :meth:`attached`, else None.
        generator: the priors' randomness (augmentations), seeded by ``settings.seed``.
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
    ) -> None:
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).to(self.device)
        self.bn_mode = update.meta.bn_mode
        self.local = update.meta.local  # FedAvg: the client's local training, unrolled by match()
        if self.bn_mode == "train":  # batch statistics as the client had, running statistics frozen
            for layer in self.model.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.momentum = 0.0
        named = dict(self.model.named_parameters())
        self.names = _select([n for n in update.gradients if n in named], settings.parameters)
        self.params = [named[n].requires_grad_(True) for n in self.names]
        self.matcher = GradientMatcher(
            update.gradients, self.names, settings.objective, settings.layer_weights, self.device
        )
        self.plan, self.settings = plan, settings
        self.prior_weights = dict(priors or {})
        build_priors(self.prior_weights, model=self.model).remove()  # validate now; built again by attached()
        self.priors: ImagePriors | None = None
        image_shape = image_shape if image_shape is not None else update.meta.input_shape
        if image_shape is None:
            raise InputError("the input shape is unknown: the update's metadata has no input_shape; pass image_shape")
        self.shape = (plan.batch_size, *image_shape)
        self.span: FirstLayerSpan | None = span_for_update(
            str(settings.span), self.model, update.gradients, plan.batch_size, image_shape
        )
        if self.span is not None:
            self.span.to(self.device)
        self.leaf_shape = self.shape if self.span is None else (plan.batch_size, self.span.rank)
        self.lower, self.upper = (b.to(self.device) for b in (bounds if bounds is not None else update.meta.bounds()))
        self.generator = torch.Generator().manual_seed(settings.seed)

    def match(self, x: Tensor, label_logits: Tensor | None) -> Tensor:
        """Matching loss of the dummies' update (graph kept, to differentiate w.r.t. x).

        FedSGD: the gradient of the mean loss over the dummies. FedAvg: the weight delta of the
        client's local training unrolled on the dummies (:func:`~inversion.fl.local.unroll_local_training`).
        """
        if self.local is None:
            loss = batch_loss(self.model(x), self.plan, label_logits)
            return self.matcher(torch.autograd.grad(loss, self.params, create_graph=True))

        def local_loss(theta, rows):
            return batch_loss(functional_call(self.model, theta, (x[rows],)), self.plan, label_logits, rows)

        delta = unroll_local_training(self.model, self.local, self.plan.batch_size, local_loss)
        return self.matcher([delta[name] for name in self.names])

    def objective(self, x: Tensor, label_logits: Tensor | None) -> tuple[Tensor, Tensor, dict[str, float]]:
        """(total, matching loss, prior terms) for the current dummies."""
        matching = self.match(x, label_logits)
        if self.priors is None:
            return matching, matching, {}
        extra, terms = self.priors(x, match=lambda z: self.match(z, label_logits), generator=self.generator)
        return matching + extra, matching, terms

    def images(self, leaf: Tensor) -> Tensor:
        """The dummies (..., K, C, H, W) of the optimised variable: itself, or its span coefficients (..., K, r)."""
        return leaf if self.span is None else self.span(leaf)

    def project(self, leaf: Tensor) -> None:
        """Boxed attacks: clamp the dummies to the pixel box; in the span, the span's nearest point to that."""
        with torch.no_grad():
            if self.span is None:
                torch.maximum(torch.minimum(leaf, self.upper, out=leaf), self.lower, out=leaf)
            else:
                leaf.copy_(
                    self.span.coefficients(torch.maximum(torch.minimum(self.span(leaf), self.upper), self.lower))
                )

    def fresh_restart(self, restart: int) -> RestartState:
        """Restart ``restart`` at step 0: its seeded initialisation (``settings.init``), on the CPU."""
        init_gen = torch.Generator().manual_seed(self.settings.seed * 1000 + restart)
        if self.settings.init == "randn":
            x = torch.randn(self.shape, generator=init_gen)
        elif self.settings.init == "rand":
            x = self.lower.cpu() + (self.upper - self.lower).cpu() * torch.rand(self.shape, generator=init_gen)
        else:
            x = torch.zeros(self.shape)
        logits = self.plan.initial_logits(init_gen)
        leaf = x if self.span is None else self.span.coefficients(x.to(self.device)).cpu()
        best_x = self.images(leaf.to(self.device)).cpu()
        return RestartState(restart=restart, x=leaf, label_logits=logits, best_x=best_x, best_logits=logits)

    @contextmanager
    def attached(self) -> Iterator[None]:
        """While optimising: the model in the client's batch-norm mode, the priors built (and hooked) on it."""
        was_training = self.model.training
        self.model.train(self.bn_mode == "train")
        self.priors = build_priors(self.prior_weights, model=self.model) if self.prior_weights else None
        try:
            yield
        finally:
            if self.priors is not None:
                self.priors.remove()
                self.priors = None
            self.model.train(was_training)
