r"""The disaggregation attack: the samples that :func:`~inversion.attack.disaggregation.disaggregate` verifies, and
gradient matching for the rest (registered as ``"disaggregation"``, :mod:`inversion.attack.registry`).

:class:`DisaggregationAttack` runs :func:`~inversion.attack.disaggregation.disaggregate` on the update (FedSGD, or
FedAvg over at most one local epoch) when it is built, then takes one of four routes (``record()["route"]``):

- ``exact``: all K samples verified and the first linear layer reads the flattened image. The verified images
  are the reconstruction (in the order found, with their verified labels); no optimisation step is run; the
  result's ``loss`` is their gradient-matching loss, computed once.
- ``anchored``: n < K verified, on the image. The n verified images are the first n dummies and stay fixed
  (:class:`AnchoredProblem`: they are no part of the optimised variable); gradient matching moves the other
  K - n, which start as usual (``attack.init``, in the first-layer span where ``attack.span`` puts them).
- ``features``: n verified inputs of a first linear layer that reads features (a CNN such as LeNet-5). A minimal
  Cocktail-Party-style stage: the first n dummies are matched one to one to the n recovered feature vectors by
  a term :data:`FEATURE_WEIGHT` :math:`\cdot \frac1n \sum_i \|f(x_i) - a_i\|^2 / \|a_i\|^2` added to gradient
  matching (:class:`FeatureProblem`, through a forward hook on that layer); all K dummies are optimised. Its
  restarts run one after another (the hook sees one forward at a time).
- ``gradient_matching``: nothing verified: the plain attack with the plan's labels.

**Labels.** The verified samples keep their verified labels. The free dummies take the plan's labels less the
verified ones: from the multiset of the plan's K labels one copy of each verified label is removed (where the
plan has it); when the plan lacked some verified labels, more than K - n remain, and those of the classes the
unrecovered samples' final-layer bias gradient supports least (the largest entries of
:attr:`Disaggregation.remaining_gradient <inversion.attack.disaggregation.Disaggregation.remaining_gradient>`'s
bias; a present class pulls its entry below zero) are dropped. Learnable label modes (``joint``, ``shared``) are
refused: the free dummies need fixed labels beside the verified ones.

**Options** (builder keyword arguments, not config fields): ``max_programmes`` and ``tolerance`` are
:func:`~inversion.attack.disaggregation.disaggregate`'s; ``feature_weight`` weighs the feature term. A variant
with other options is registered as, e.g., ``register_attack("disaggregation_quick",
functools.partial(DisaggregationAttack, max_programmes=8))``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from inversion.attack.disaggregation import TOLERANCE, Disaggregation, disaggregate
from inversion.attack.labels import LabelPlan
from inversion.attack.optimize import Inversion
from inversion.attack.problem import AttackProblem
from inversion.attack.runner import InversionResult
from inversion.attack.settings import AttackSettings
from inversion.attack.state import FinishedRestart, RunState
from inversion.fl.update import SharedUpdate
from inversion.utils.errors import InputError

__all__ = [
    "FEATURE_WEIGHT",
    "AnchoredProblem",
    "DisaggregationAttack",
    "DisaggregationResult",
    "FeatureProblem",
    "merge_labels",
]

FEATURE_WEIGHT = 1.0
"""Weight of the feature term (a relative squared error, about 1 at a random start) beside the matching loss."""


def merge_labels(planned: Tensor, recovered: np.ndarray, remaining_bias: np.ndarray | None) -> Tensor:
    """The K labels of the dummies: the n verified samples' first, then K - n of the plan's (see the module
    docstring).

    Args:
        planned: the plan's (K,) fixed labels, sorted by class.
        recovered: the verified samples' (n,) labels, in their dummies' order.
        remaining_bias: (C,) the unrecovered samples' mean final-layer bias gradient, or None (no bias, or n = K).

    Returns:
        (K,) int64: ``recovered``, then the free dummies' labels sorted by class.
    """
    k, rest = len(planned), [int(label) for label in planned.tolist()]
    for label in recovered.tolist():
        if label in rest:
            rest.remove(label)
    surplus = len(rest) - (k - len(recovered))
    if surplus > 0:  # the plan missed verified labels: drop the least supported classes' extra copies
        support = np.zeros(int(max(rest)) + 1) if remaining_bias is None else remaining_bias
        rest = sorted(sorted(rest, key=lambda label: support[label])[: len(rest) - surplus])
    return torch.as_tensor([*recovered.tolist(), *rest], dtype=torch.int64)


class AnchoredProblem(AttackProblem):
    """The matching problem with the first n dummies fixed to given images (``anchors``); the optimised variable
    is the other K - n dummies (or their span coefficients): ``leaf_shape`` (K - n, ...).

    Args:
        anchors: (n, C, H, W) normalised images, n <= K; the rest as :class:`AttackProblem`'s.
    """

    def __init__(self, *args: Any, anchors: Tensor, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.anchors = anchors.to(self.device, torch.float32)
        self.leaf_shape = (self.leaf_shape[0] - len(anchors), *self.leaf_shape[1:])

    def images(self, leaf: Tensor) -> Tensor:
        """The dummies (..., K, C, H, W): the anchors, then the free ones of the variable (..., K - n, ...)."""
        free = super().images(leaf)
        return torch.cat([self.anchors.expand(*free.shape[:-4], *self.anchors.shape), free], dim=-4)


class FeatureProblem(AttackProblem):
    r"""The matching problem plus a feature term: the first n dummies' inputs :math:`f(x_i)` of the linear layer
    ``layer`` should be the recovered ``targets`` :math:`a_i` (``weight`` times their mean relative squared error).

    Args:
        layer: the name of the layer's module in the model (``nn.Linear``).
        targets: (n, d) the recovered inputs of that layer, n <= K.
        weight: the feature term's weight; the rest as :class:`AttackProblem`'s.
    """

    def __init__(self, *args: Any, layer: str, targets: Tensor, weight: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.layer: nn.Module = dict(self.model.named_modules())[layer]
        self.targets = targets.to(self.device, torch.float32)
        self.weight = float(weight)
        self._seen: list[Tensor] = []  # the layer's inputs of the forwards since the last objective

    def feature_misfit(self, inputs: Tensor) -> Tensor:
        """Mean over the n targeted dummies of :math:`\\|f(x_i) - a_i\\|^2 / \\|a_i\\|^2`, for the layer's
        inputs (K, ...) of the K dummies."""
        n = len(self.targets)
        features = inputs.reshape(len(inputs), -1)[:n]
        scale = self.targets.square().sum(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
        return ((features - self.targets).square().sum(dim=1) / scale).mean()

    def objective(self, x: Tensor, label_logits: Tensor | None) -> tuple[Tensor, Tensor, dict[str, float]]:
        """(total with the feature term, matching loss, prior terms); the layer's inputs come from the matching
        forward (the first after :meth:`attached` hooked the layer)."""
        self._seen.clear()
        total, matching, terms = super().objective(x, label_logits)
        misfit = self.feature_misfit(self._seen[0])
        self._seen.clear()
        return total + self.weight * misfit, matching, terms

    @contextmanager
    def attached(self) -> Iterator[None]:
        """As :meth:`AttackProblem.attached`, with the layer's inputs recorded for :meth:`objective`."""
        handle = self.layer.register_forward_pre_hook(lambda _module, args: self._seen.append(args[0]))
        try:
            with super().attached():
                yield
        finally:
            handle.remove()
            self._seen.clear()


@dataclasses.dataclass
class DisaggregationResult(InversionResult):
    """An :class:`InversionResult` with what disaggregation recovered (:meth:`DisaggregationAttack.record`);
    ``seconds`` includes this session's disaggregation."""

    disaggregation: dict[str, Any] = dataclasses.field(default_factory=dict)


class DisaggregationAttack(Inversion):
    """Disaggregation, then gradient matching for what it did not verify (see the module docstring).

    Args:
        model, update, plan, settings, bounds, image_shape, priors, device, identity, local_orders: as
            :class:`~inversion.attack.optimize.Inversion`'s; the plan's labels must be fixed.
        max_programmes, tolerance: :func:`~inversion.attack.disaggregation.disaggregate`'s, with its defaults.
        feature_weight: the ``features`` route's weight of the feature term.

    Attributes:
        disaggregated: what :func:`~inversion.attack.disaggregation.disaggregate` returned.
        route: ``exact``, ``anchored``, ``features`` or ``gradient_matching``.
        problem, runner: as :class:`~inversion.attack.optimize.Inversion`'s.

    Raises:
        ValueError: learnable labels, and what :func:`disaggregate` refuses (e.g. several local epochs).
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
        max_programmes: int | None = None,
        tolerance: float = TOLERANCE,
        feature_weight: float = FEATURE_WEIGHT,
    ) -> None:
        if plan.fixed is None:
            raise InputError(
                f"attack.method=disaggregation needs fixed labels for the samples it does not recover; label mode "
                f"{plan.mode} learns them: use a label-restoration method or oracle"
            )
        found = disaggregate(
            update,
            model,
            batch_size=plan.batch_size,
            image_shape=image_shape,
            tolerance=tolerance,
            max_programmes=max_programmes,
        )
        self.disaggregated: Disaggregation = found
        remaining_bias = None if found.remaining_gradient is None else found.remaining_gradient[1]
        labels = merge_labels(plan.fixed, found.labels, remaining_bias)
        merged = LabelPlan(plan.mode, plan.num_classes, plan.batch_size, fixed=labels, restoration=plan.restoration)
        common: dict[str, Any] = {
            "bounds": bounds,
            "image_shape": image_shape,
            "priors": priors,
            "device": device,
            "local_orders": local_orders,
        }
        shape = tuple(image_shape if image_shape is not None else update.meta.input_shape or ())
        problem: AttackProblem
        if found.on_image and found.found == plan.batch_size:
            self.route = "exact"
            exact = dataclasses.replace(settings, span="never")  # nothing is optimised
            problem = AnchoredProblem(model, update, merged, exact, anchors=found.images(shape), **common)
        elif found.on_image and found.found:
            self.route = "anchored"
            problem = AnchoredProblem(model, update, merged, settings, anchors=found.images(shape), **common)
        elif found.found:
            self.route = "features"
            if settings.batch_restarts == "always":
                raise InputError(
                    "attack.batch_restarts=always: the disaggregation attack's feature matching runs its restarts "
                    "one after another; set attack.batch_restarts=auto or never"
                )
            problem = FeatureProblem(
                model,
                update,
                merged,
                dataclasses.replace(settings, batch_restarts="never"),
                layer=found.layer.rsplit(".", 1)[0],
                targets=torch.as_tensor(found.inputs),
                weight=feature_weight,
                **common,
            )
        else:
            self.route = "gradient_matching"
            problem = AttackProblem(model, update, merged, settings, **common)
        self._set_problem(problem, identity)
        if self.route == "exact":  # the one restart is finished: the verified images and their matching loss
            anchors = problem.images(torch.zeros(problem.leaf_shape, device=problem.device))
            with problem.attached():
                loss = float(problem.match(anchors, None, create_graph=False))
            done = FinishedRestart(0, loss, anchors.cpu(), None)
            self.runner.state = RunState(finished=[done], restart=problem.settings.restarts)

    def record(self) -> dict[str, Any]:
        """What disaggregation recovered, as plain JSON-ready data (what ``results.json`` records): the route, n
        verified of K, their labels and residuals, the first layer's rank (``visible``), the programmes and rounds
        it took and its seconds."""
        found = self.disaggregated
        return {
            "route": self.route,
            "found": found.found,
            "batch_size": found.batch_size,
            "visible": found.visible,
            "labels": found.labels.tolist(),
            "residuals": found.residuals.tolist(),
            "on_image": found.on_image,
            "layer": found.layer,
            "programmes": found.programmes,
            "rounds": found.rounds,
            "seconds": found.seconds,
        }

    def run(
        self,
        *,
        progress: bool = True,
        monitor: Callable[[Tensor], float] | None = None,
        monitor_every: int = 50,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 0,
        snapshot_every: int = 0,
    ) -> DisaggregationResult:
        """As :meth:`Inversion.run <inversion.attack.optimize.Inversion.run>` (no steps, and no progress bar, on
        the ``exact`` route), with the :meth:`record`."""
        result = super().run(
            progress=progress and self.route != "exact",
            monitor=monitor,
            monitor_every=monitor_every,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            snapshot_every=snapshot_every,
        )
        kept = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
        kept["seconds"] += self.disaggregated.seconds
        return DisaggregationResult(**kept, disaggregation=self.record())
