"""Gradient inversion: dummy inputs optimised so that their gradient matches the shared one.

:mod:`.objectives` (cosine / l2 matching), :mod:`.labels` (label modes: restored, oracle,
joint, shared), :mod:`.optimize` (the optimisation loop, restarts, checkpoints).
"""

from inversion.attack.labels import LABEL_MODES, LabelPlan, plan_labels
from inversion.attack.objectives import OBJECTIVES, GradientMatcher
from inversion.attack.optimize import Inversion, InversionResult, lr_factor
from inversion.attack.settings import INITS, OPTIMIZERS, SCHEDULES, AttackSettings

__all__ = [
    "INITS",
    "LABEL_MODES",
    "OBJECTIVES",
    "OPTIMIZERS",
    "SCHEDULES",
    "AttackSettings",
    "GradientMatcher",
    "Inversion",
    "InversionResult",
    "LabelPlan",
    "lr_factor",
    "plan_labels",
]
