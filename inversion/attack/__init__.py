"""Gradient inversion: dummy inputs optimised so that their gradient matches the shared one.

:mod:`.objectives` (cosine / l2 matching), :mod:`.labels` (label modes: restored, oracle,
joint, shared), :mod:`.optimize` (the optimisation loop, restarts, checkpoints).
"""
from .labels import LABEL_MODES, LabelPlan, plan_labels
from .objectives import OBJECTIVES, GradientMatcher
from .optimize import Inversion, InversionResult, lr_factor
from .settings import INITS, OPTIMIZERS, SCHEDULES, AttackSettings

__all__ = [
    "LABEL_MODES", "OBJECTIVES", "INITS", "OPTIMIZERS", "SCHEDULES",
    "AttackSettings", "GradientMatcher", "Inversion", "InversionResult", "LabelPlan", "lr_factor", "plan_labels",
]
