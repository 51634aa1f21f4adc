"""The gradient-matching problem: what the attack minimises, over what, and where it starts. No loop.

The server's copy of the model computes, for a dummy batch ``x`` (K, C, H, W) and the label
plan, the update the client would have sent: for FedSGD the gradient of its loss (mean
cross-entropy); for FedAvg the weight delta of its local SGD steps, unrolled differentiably on the
dummies (Inverting Gradients' multi-step attack; the dummies fall into the local mini-batches in the
order of the plan's labels, or with no order assumed for a shuffling client: :mod:`.order_free`). The objective
is the matching loss of that update against the shared one plus the weighted image priors (and, order-free over
several epochs, the term that keeps the epochs' dummy sets equal). The optimised variable is the dummies
themselves, or, under the first-layer span constraint (:mod:`inversion.attack.span`), their coefficients (K, r) in
the span; boxed attacks project it onto the valid pixel box after each step.

With ``bn_mode="train"`` the model runs its batch-norm layers on the dummies' batch statistics, as the
client did, but their running statistics are frozen (momentum 0): they are what the ``bn`` prior
compares against, and must not drift towards the dummies' own statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from inversion.attack.labels import LabelPlan, batch_loss, labels_in_use
from inversion.attack.objectives import GradientMatcher
from inversion.attack.order_free import ANNEAL_MOVES, REORDER_ROUNDS, LocalLayout
from inversion.attack.settings import AttackSettings
from inversion.attack.span import FirstLayerSpan, span_for_update
from inversion.attack.state import RestartState
from inversion.fl.local import unroll_local_training
from inversion.fl.update import SharedUpdate
from inversion.models import final_layer
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
        shape: (K, C, H, W) of the reconstruction; leaf_shape: of the optimised variable ((N, C, H, W) for
            N dummies, or their span coefficients (N, r); N = K, or K per local epoch order-free).
        layout: FedAvg: where the dummies sit in the client's local mini-batches
            (:class:`~inversion.attack.order_free.LocalLayout`); None for FedSGD.
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
        local_orders: Tensor | None = None,
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
        self.layout = (
            None
            if self.local is None
            else LocalLayout.build(
                self.local, plan.batch_size, str(settings.local_order), plan.fixed is not None, local_orders
            )
        )
        if local_orders is not None and self.layout is None:
            raise InputError("local_orders are the mini-batch orders of a FedAvg client; this is a FedSGD update")
        self.orders = None if self.layout is None else self.layout.orders  # the current ones (searched order-free)
        bias = final_layer(self.model).bias
        self.bias_name = next(  # what the order-free search reads (see reorder)
            (n for n, p in self.model.named_parameters() if p is bias and n in update.gradients), None
        )
        self.bias_change = None if self.bias_name is None else update.gradients[self.bias_name].to(self.device)
        self.dummy_labels = (
            None if plan.fixed is None else plan.fixed.repeat(1 if self.layout is None else self.layout.sets)
        )
        dummies = plan.batch_size * (1 if self.layout is None else self.layout.sets)
        self.span: FirstLayerSpan | None = span_for_update(
            str(settings.span), self.model, update.gradients, plan.batch_size, image_shape
        )
        if self.span is not None:
            self.span.to(self.device)
        self.leaf_shape = (dummies, *image_shape) if self.span is None else (dummies, self.span.rank)
        self.lower, self.upper = (b.to(self.device) for b in (bounds if bounds is not None else update.meta.bounds()))
        self.generator = torch.Generator().manual_seed(settings.seed)

    def match(
        self,
        x: Tensor,
        label_logits: Tensor | None,
        orders: Tensor | None = None,
        *,
        create_graph: bool = True,
    ) -> Tensor:
        """Matching loss of the dummies' update (graph kept, to differentiate w.r.t. x, unless ``create_graph``
        is False).

        FedSGD: the gradient of the mean loss over the dummies. FedAvg: the weight delta of the client's local
        training unrolled on the dummies (:meth:`unroll`), laid into its mini-batches by ``orders``.
        """
        if self.local is None:
            loss = batch_loss(self.model(x), self.plan, label_logits)
            return self.matcher(torch.autograd.grad(loss, self.params, create_graph=create_graph))
        delta = self.unroll(x, label_logits, orders, create_graph=create_graph)
        return self.matcher([delta[name] for name in self.names])

    def unroll(
        self,
        x: Tensor,
        label_logits: Tensor | None,
        orders: Tensor | None = None,
        *,
        create_graph: bool = True,
        on_step: Callable[[int, Mapping[str, Tensor]], None] | None = None,
    ) -> dict[str, Tensor]:
        """FedAvg: the weight delta of the client's local training on the N dummies ``x``
        (:func:`~inversion.fl.local.unroll_local_training`), laid into its mini-batches by ``orders`` ((⌈E⌉, K)
        indices into the dummies; default :attr:`orders`)."""
        assert self.local is not None and self.orders is not None  # a FedAvg update has its layout
        labels = None if self.dummy_labels is None else self.dummy_labels.to(self.device)

        def local_loss(theta, rows):
            logits = functional_call(self.model, theta, (x[rows],))
            if labels is not None:
                return F.cross_entropy(logits, labels[rows])
            return batch_loss(logits, self.plan, label_logits, rows)

        orders = (self.orders if orders is None else orders).to(self.device)
        k = self.plan.batch_size
        return unroll_local_training(
            self.model, self.local, k, local_loss, orders, create_graph=create_graph, on_step=on_step
        )

    @property
    def searching(self) -> bool:
        """The order-free layout searches which mini-batch holds which dummy (:meth:`reorder`); it needs the
        final layer's bias change."""
        return self.layout is not None and self.layout.search and self.bias_name is not None

    def reorder(self, leaf: Tensor, label_logits: Tensor | None, step: int, restart: int = 0) -> None:
        r"""The order-free search of which mini-batch holds which dummy (:mod:`.order_free`), at attack step ``step``
        of restart ``restart``.

        One unrolled pass records the weights :math:`\theta_s` of every local step; the softmax of every dummy at
        each gives the contributions :math:`c_{s,k} = -\eta\, w_s (p_k^{(s)} - y_k) / |b_s|` to the final layer's
        bias change (weight decay's :math:`-\eta\, w_s \lambda b_s` is moved to the target). Annealing finds the
        assignment whose contributions add up closest to the shared change (:meth:`LocalLayout.anneal`, seeded by
        ``settings.seed``, ``step`` and ``restart``); it replaces :attr:`orders` when its unrolled bias change is
        closer too, and the search repeats on the new assignment's trajectory (at most :data:`REORDER_ROUNDS`
        times) until it finds nothing closer.
        """
        local, layout, labels = self.local, self.layout, self.dummy_labels
        assert local is not None and layout is not None and labels is not None  # searching needs them
        assert self.orders is not None
        x = self.images(leaf.detach())
        logits = None if label_logits is None else label_logits.detach()
        generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + step + restart * 1_000_000_007)
        now = self._bias_misfit(x, logits, self.orders)
        for _ in range(REORDER_ROUNDS):  # the trajectory of the new assignment gives a better surrogate
            contributions, target = self._bias_contributions(x, logits)
            found = layout.anneal(
                self.orders, labels, contributions, target, local, generator, ANNEAL_MOVES * labels.numel()
            )
            loss = self._bias_misfit(x, logits, found)
            if loss >= now:
                return
            self.orders, now = found, loss

    def _bias_misfit(self, x: Tensor, label_logits: Tensor | None, orders: Tensor) -> float:
        """Squared distance of the unrolled final-layer bias change under ``orders`` to the shared one."""
        assert self.bias_name is not None and self.bias_change is not None  # searching needs them
        gap = self.unroll(x, label_logits, orders, create_graph=False)[self.bias_name].detach() - self.bias_change
        return float(torch.dot(gap.reshape(-1), gap.reshape(-1)))

    def _bias_contributions(self, x: Tensor, label_logits: Tensor | None) -> tuple[Tensor, Tensor]:
        """(S, N, C) contributions :math:`c_{s,k}` of every dummy to the bias change along the trajectory of the
        current :attr:`orders`, and the (C,) target they add up to (the shared change less weight decay's part)."""
        local, labels, bias_name, target = self.local, self.dummy_labels, self.bias_name, self.bias_change
        assert local is not None and labels is not None and bias_name is not None and target is not None
        thetas: list[dict[str, Tensor]] = []
        self.unroll(x, label_logits, create_graph=False, on_step=lambda _, theta: thetas.append(dict(theta)))
        k, weights = self.plan.batch_size, local.step_weights()
        onehot = F.one_hot(labels, self.plan.num_classes).double()
        target, contributions = target.double().cpu(), []
        with torch.no_grad():
            for s, theta in enumerate(thetas):
                size = len(range(*local.rows(s, k).indices(k)))
                probs = torch.softmax(functional_call(self.model, theta, (x,)), dim=1).double().cpu()
                contributions.append(-local.lr * float(weights[s]) / size * (probs - onehot))
                if local.weight_decay:
                    target += local.lr * float(weights[s]) * local.weight_decay * theta[bias_name].double().cpu()
        return torch.stack(contributions), target

    def objective(self, x: Tensor, label_logits: Tensor | None) -> tuple[Tensor, Tensor, dict[str, float]]:
        """(total, matching loss, prior terms) for the current dummies."""
        matching = self.match(x, label_logits)
        disagreement = None if self.layout is None else self.layout.disagreement(x)
        total = matching if disagreement is None else matching + self.settings.epoch_consistency * disagreement
        if self.priors is None:
            return total, matching, {}
        extra, terms = self.priors(x, match=lambda z: self.match(z, label_logits), generator=self.generator)
        return total + extra, matching, terms

    def images(self, leaf: Tensor) -> Tensor:
        """The dummies (..., N, C, H, W) of the optimised variable: itself, or its span coefficients (..., N, r)."""
        return leaf if self.span is None else self.span(leaf)

    def reconstruction(self, dummies: Tensor) -> Tensor:
        """The (K, C, H, W) reconstruction of the (N, C, H, W) dummies: themselves, or order-free over several
        local epochs, the matched mean of the epochs' sets (:meth:`LocalLayout.consensus`)."""
        return dummies if self.layout is None else self.layout.consensus(dummies)

    def labels(self, label_logits: Tensor | None) -> np.ndarray:
        """The (K,) hard labels of the reconstruction: fixed, or learned (the first dummy set's, order-free)."""
        if label_logits is not None and label_logits.ndim == 2:
            label_logits = label_logits[: self.plan.batch_size]
        return labels_in_use(self.plan, label_logits)

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
        shape = (self.leaf_shape[0], *self.shape[1:])
        if self.settings.init == "randn":
            x = torch.randn(shape, generator=init_gen)
        elif self.settings.init == "rand":
            x = self.lower.cpu() + (self.upper - self.lower).cpu() * torch.rand(shape, generator=init_gen)
        else:
            x = torch.zeros(shape)
        logits = self.initial_logits(init_gen)
        leaf = x if self.span is None else self.span.coefficients(x.to(self.device)).cpu()
        best_x = self.reconstruction(self.images(leaf.to(self.device))).cpu()
        return RestartState(restart=restart, x=leaf, label_logits=logits, best_x=best_x, best_logits=logits)

    def initial_logits(self, generator: torch.Generator) -> Tensor | None:
        """The learnable label logits of a fresh restart, drawn N(0, 1): the plan's, or (N, C) for ``joint`` with
        N dummies (one set per local epoch order-free); None when the labels are fixed."""
        logits = self.plan.initial_logits(generator)
        if logits is not None and logits.ndim == 2 and self.leaf_shape[0] != logits.shape[0]:
            return torch.randn((self.leaf_shape[0], self.plan.num_classes), generator=generator)
        return logits

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
