"""Gradient inversion: dummy inputs optimised so that their gradient matches the shared one.

:mod:`.objectives` (cosine / l2 matching), :mod:`.labels` (label modes: restored, oracle,
joint, shared), :mod:`.problem` (the matching problem: model copy, FedSGD / FedAvg matching, priors,
span, pixel box), :mod:`.runner` (the optimisation loop over the restarts) with its :mod:`.steppers`
(sequential, batched), :mod:`.callbacks` and :mod:`.checkpoint` of its :mod:`.state`, :mod:`.optimize`
(:class:`Inversion`, the attack's public face) and :mod:`.registry` (the attacks by name).
"""

from inversion.attack.labels import LabelPlan, label_modes, plan_labels
from inversion.attack.objectives import OBJECTIVES, GradientMatcher
from inversion.attack.optimize import Inversion
from inversion.attack.registry import attack_names, get_attack, register_attack, unregister_attack
from inversion.attack.runner import InversionResult, lr_factor
from inversion.attack.settings import INITS, OPTIMIZERS, SCHEDULES, AttackSettings

__all__ = [
    "INITS",
    "OBJECTIVES",
    "OPTIMIZERS",
    "SCHEDULES",
    "AttackSettings",
    "GradientMatcher",
    "Inversion",
    "InversionResult",
    "LabelPlan",
    "attack_names",
    "get_attack",
    "label_modes",
    "lr_factor",
    "plan_labels",
    "register_attack",
    "unregister_attack",
]
