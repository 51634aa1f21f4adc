"""Image priors (regularisers) for gradient inversion. Never imports :mod:`inversion`.

The attack adds ``weight * value`` of each active prior to its gradient-matching loss, for the dummy batch
``x`` (B, C, H, W) at every step::

    from priors import build_priors, PRIOR_NAMES
    image_priors = build_priors({"tv": 1e-4, "l2": 1e-6, "bn": 1e-2}, model=model)
    model(x)  # the bn prior reads the statistics of the model's most recent forward
    total, terms = image_priors(x, match=matching_loss, generator=generator)

Priors (:data:`PRIOR_NAMES`), each a plain function and/or an ``nn.Module``:

- ``tv``: :func:`total_variation` / :class:`TotalVariation` (:mod:`.tv`), anisotropic, element means.
- ``l2``: :func:`l2_norm` / :class:`L2Norm` (:mod:`.norm`), mean per-image norm.
- ``bn``: :func:`bn_statistics_loss` / :class:`BNStatistics` (:mod:`.bn`), DeepInversion's batch-norm
  statistics, via forward hooks.
- ``augment``: :func:`augment` / :class:`AugmentationConsistency` (:mod:`.augment`), the matching loss of
  randomly shifted / flipped dummies.

:class:`ImagePriors` and :func:`build_priors` (:mod:`.combine`) weigh and sum them.
"""

from .augment import AugmentationConsistency, augment
from .bn import BNStatistics, bn_statistics_loss
from .combine import PRIOR_NAMES, ImagePriors, Prior, build_priors
from .norm import L2Norm, l2_norm
from .tv import TotalVariation, total_variation

__all__ = [
    "PRIOR_NAMES",
    "AugmentationConsistency",
    "BNStatistics",
    "ImagePriors",
    "L2Norm",
    "Prior",
    "TotalVariation",
    "augment",
    "bn_statistics_loss",
    "build_priors",
    "l2_norm",
    "total_variation",
]
