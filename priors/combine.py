"""Weighted combination of the registered image priors (:mod:`priors.registry`), built from a mapping of weights
(a config's ``priors`` section)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .errors import PriorsInputError
from .registry import Prior, prior_names, prior_spec

__all__ = ["ImagePriors", "build_priors"]


def _checked_weights(weights: Mapping[str, Any]) -> dict[str, float]:
    """The weights as floats; unknown names and negative or non-finite weights raise ValueError."""
    names = prior_names()
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise PriorsInputError(f"unknown prior(s) {unknown}; the priors are {list(names)}")
    checked = {}
    for name, weight in weights.items():
        try:
            checked[name] = float(weight)
        except (TypeError, ValueError):
            raise PriorsInputError(f"the weight of prior {name!r} must be a number; got {weight!r}") from None
        if not math.isfinite(checked[name]) or checked[name] < 0:
            raise PriorsInputError(f"the weight of prior {name!r} must be finite and >= 0; got {weight!r}")
    return checked


class ImagePriors:
    r"""The weighted sum of the active priors for a dummy batch.

    .. math:: \mathcal{R}(x) = \sum_{p} w_p \, \mathcal{R}_p(x)

    Args:
        priors: ``{name: (weight, prior)}`` with registered names (:func:`~priors.registry.prior_names`), each a
            built prior of its kind (:mod:`priors.registry`), e.g. ``tv``: :class:`~priors.tv.TotalVariation`,
            ``l2``: :class:`~priors.norm.L2Norm`, ``bn``: :class:`~priors.bn.BNStatistics`, ``augment``:
            :class:`~priors.augment.AugmentationConsistency`. Usually made by :func:`build_priors`; build it by hand
            to configure a prior (e.g. ``max_shift``).

    The priors are evaluated in registration order. Calling it runs no model forward itself: the ``bn`` term is
    read from the hooks of the model's most recent forward, so the caller must run the model on ``x`` (with
    autograd) first; ``augment`` runs ``match`` on augmented copies (after ``bn`` has been read).
    """

    def __init__(self, priors: Mapping[str, tuple[float, Prior]]) -> None:
        weights = _checked_weights({name: weight for name, (weight, _) in priors.items()})
        self.priors: dict[str, tuple[float, Prior]] = {
            name: (weights[name], priors[name][1]) for name in prior_names() if name in priors
        }

    def __call__(
        self,
        x: Tensor,
        *,
        match: Callable[[Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        """Weighted total and the unweighted value of each prior.

        Args:
            x: the dummy batch :math:`(B, C, H, W)`.
            match: the gradient-matching loss of a batch (needed by ``augment``), handed to every prior.
            generator: the source of the priors' randomness (needed by ``augment``), handed to every prior.

        Returns:
            ``(total, terms)``: the scalar tensor :math:`\\sum_p w_p \\mathcal{R}_p(x)` (0 with no priors) and
            ``{name: float(R_p(x))}`` for logging.
        """
        total, terms = x.new_zeros(()), {}
        for name, (weight, prior) in self.priors.items():
            value = prior(x, match=match, generator=generator)
            total = total + weight * value
            terms[name] = value.item()
        return total, terms

    def remove(self) -> None:
        """Release what the priors hold (their ``remove()``, e.g. the ``bn`` prior's hooks on the model)."""
        for _, prior in self.priors.values():
            remove = getattr(prior, "remove", None)
            if remove is not None:
                remove()


def build_priors(weights: Mapping[str, Any], *, model: nn.Module | None = None) -> ImagePriors:
    """The registered priors with a non-zero weight, each from its builder (its default settings).

    Args:
        weights: ``{name: weight}``, registered names (:func:`~priors.registry.prior_names`); a weight of 0 leaves
            the prior out.
        model: the attacked model, needed by the priors that read it (``needs_model``, e.g. ``bn``, which hooks
            its batch-norm layers).

    Raises:
        ValueError: an unknown name, a negative or non-finite weight, a prior that needs the model without one,
            or the prior's own refusal (e.g. ``bn`` with a model that has no batch-norm layers).

    Example:
        >>> import torch
        >>> x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])  # TV: (1 + 2) / 2 + (2 + 3) / 2 = 4
        >>> total, terms = build_priors({"tv": 0.5, "bn": 0.0})(x)
        >>> total.item(), terms
        (2.0, {'tv': 4.0})
    """
    checked = _checked_weights(weights)
    specs = [prior_spec(name) for name in prior_names() if checked.get(name, 0.0) > 0]
    for spec in specs:
        if spec.needs_model and model is None:
            raise PriorsInputError(f"the {spec.name!r} prior needs the model (build_priors(..., model=model))")
    built: dict[str, tuple[float, Prior]] = {}
    try:
        for spec in specs:
            built[spec.name] = (checked[spec.name], spec.build(model) if spec.needs_model else spec.build())
    except BaseException:
        ImagePriors(built).remove()  # the hooks of those built so far
        raise
    return ImagePriors(built)
