"""Weighted combination of the image priors, built from a mapping of weights (a config's ``priors`` section)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .augment import AugmentationConsistency
from .bn import BNStatistics
from .norm import L2Norm
from .tv import TotalVariation

__all__ = ["PRIOR_NAMES", "ImagePriors", "Prior", "build_priors"]

PRIOR_NAMES = ("tv", "l2", "bn", "augment")
"""Every prior, in the order they are evaluated ("bn" before "augment", whose forwards replace the statistics)."""

Prior = TotalVariation | L2Norm | BNStatistics | AugmentationConsistency


def _checked_weights(weights: Mapping[str, Any]) -> dict[str, float]:
    """The weights as floats; unknown names and negative or non-finite weights raise ValueError."""
    unknown = sorted(set(weights) - set(PRIOR_NAMES))
    if unknown:
        raise ValueError(f"unknown prior(s) {unknown}; the priors are {list(PRIOR_NAMES)}")
    checked = {}
    for name, weight in weights.items():
        try:
            checked[name] = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"the weight of prior {name!r} must be a number; got {weight!r}") from None
        if not math.isfinite(checked[name]) or checked[name] < 0:
            raise ValueError(f"the weight of prior {name!r} must be finite and >= 0; got {weight!r}")
    return checked


class ImagePriors:
    r"""The weighted sum of the active priors for a dummy batch.

    .. math:: \mathcal{R}(x) = \sum_{p} w_p \, \mathcal{R}_p(x)

    Args:
        priors: ``{name: (weight, prior)}`` with names from :data:`PRIOR_NAMES`, each prior of its kind:
            ``tv``: :class:`~priors.tv.TotalVariation`, ``l2``: :class:`~priors.norm.L2Norm`,
            ``bn``: :class:`~priors.bn.BNStatistics`, ``augment``: :class:`~priors.augment.AugmentationConsistency`.
            Usually made by :func:`build_priors`; build it by hand to configure a prior (e.g. ``max_shift``).

    Calling it runs no model forward itself: the ``bn`` term is read from the hooks of the model's most recent
    forward, so the caller must run the model on ``x`` (with autograd) first; ``augment`` runs ``match`` on
    augmented copies (after ``bn`` has been read).
    """

    def __init__(self, priors: Mapping[str, tuple[float, Prior]]) -> None:
        weights = _checked_weights({name: weight for name, (weight, _) in priors.items()})
        self.priors: dict[str, tuple[float, Prior]] = {
            name: (weights[name], priors[name][1]) for name in PRIOR_NAMES if name in priors
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
            match: the gradient-matching loss of a batch (needed by ``augment``).
            generator: the source of the augmentations' randomness (needed by ``augment``).

        Returns:
            ``(total, terms)``: the scalar tensor :math:`\\sum_p w_p \\mathcal{R}_p(x)` (0 with no priors) and
            ``{name: float(R_p(x))}`` for logging.
        """
        total, terms = x.new_zeros(()), {}
        for name, (weight, prior) in self.priors.items():
            if name == "bn":
                value = prior.value()
            elif name == "augment":
                if match is None or generator is None:
                    raise ValueError("the 'augment' prior needs match= and generator=")
                value = prior(x, match, generator)
            else:
                value = prior(x)
            total = total + weight * value
            terms[name] = value.item()
        return total, terms

    def remove(self) -> None:
        """Detach the ``bn`` prior's hooks from the model (nothing else holds any)."""
        if "bn" in self.priors:
            self.priors["bn"][1].remove()


def build_priors(weights: Mapping[str, Any], *, model: nn.Module | None = None) -> ImagePriors:
    """The priors with a non-zero weight, each with its default settings.

    Args:
        weights: ``{name: weight}``, names from :data:`PRIOR_NAMES`; a weight of 0 leaves the prior out.
        model: the attacked model, needed by ``bn`` (which hooks its batch-norm layers).

    Raises:
        ValueError: an unknown name, a negative or non-finite weight, ``bn`` without a model or with a model
            that has no batch-norm layers.
    """
    active = {name: weight for name, weight in _checked_weights(weights).items() if weight > 0}
    if "bn" in active and model is None:
        raise ValueError("the 'bn' prior needs the model (build_priors(..., model=model))")
    makers: dict[str, Callable[[], Prior]] = {
        "tv": TotalVariation,
        "l2": L2Norm,
        "bn": lambda: BNStatistics(model),
        "augment": AugmentationConsistency,
    }
    return ImagePriors({name: (weight, makers[name]()) for name, weight in active.items()})
