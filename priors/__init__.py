"""Image priors (regularisers) for gradient inversion. Never imports :mod:`inversion`.

The attack adds ``weight * value`` of each active prior to its gradient-matching loss, for the dummy batch
``x`` (B, C, H, W) at every step::

    from priors import build_priors, prior_names
    image_priors = build_priors({"tv": 1e-4, "l2": 1e-6, "bn": 1e-2}, model=model)
    model(x)  # the bn prior reads the statistics of the model's most recent forward
    total, terms = image_priors(x, match=matching_loss, generator=generator)

The priors are registered by name (:mod:`.registry`: :func:`register_prior`, :func:`prior_spec`,
:func:`prior_names`); a new one is a module with its function and its registration. The built-ins
(:data:`PRIOR_NAMES`), each a plain function and a built prior, register themselves:

- ``tv``: :func:`total_variation` / :class:`TotalVariation` (:mod:`.tv`), anisotropic, element means.
- ``l2``: :func:`l2_norm` / :class:`L2Norm` (:mod:`.norm`), mean per-image norm.
- ``bn``: :func:`bn_statistics_loss` / :class:`BNStatistics` (:mod:`.bn`), DeepInversion's batch-norm
  statistics, via forward hooks (needs the model; not batchable).
- ``augment``: :func:`augment` / :class:`AugmentationConsistency` (:mod:`.augment`), the matching loss of
  randomly shifted / flipped dummies (not batchable: its own randomness per call).

:class:`ImagePriors` and :func:`build_priors` (:mod:`.combine`) weigh and sum them.
"""

# isort: off
# The built-ins register themselves on import, in this order (that of PRIOR_NAMES, the order of evaluation).
from .registry import PRIOR_NAMES, Prior, PriorSpec, prior_names, prior_spec, register_prior, unregister_prior
from .tv import TotalVariation, total_variation
from .norm import L2Norm, l2_norm
from .bn import BNStatistics, bn_statistics_loss
from .augment import AugmentationConsistency, augment
from .combine import ImagePriors, build_priors
from .errors import PriorsInputError

# isort: on

__all__ = [
    "PRIOR_NAMES",
    "AugmentationConsistency",
    "BNStatistics",
    "ImagePriors",
    "L2Norm",
    "Prior",
    "PriorSpec",
    "PriorsInputError",
    "TotalVariation",
    "augment",
    "bn_statistics_loss",
    "build_priors",
    "l2_norm",
    "prior_names",
    "prior_spec",
    "register_prior",
    "total_variation",
    "unregister_prior",
]
