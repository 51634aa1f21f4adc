"""Greedy counting baselines: LLG (Wainakh et al., "User-Level Label Leakage from Gradients in Federated
Learning", PETS 2022) and its bias-gradient variant.

Both score each class, take the classes with a negative score as present (one instance each), estimate the
*impact* :math:`m < 0` one instance has on its class's score, and hand the remaining instances out greedily
(:func:`label_restore.counting.greedy_counts`, one shared helper).
"""

from __future__ import annotations

import numpy as np
import torch

from ._inputs import LayerInputs
from ._method import restoration_method
from .consistency import bias_gradient_findings, presence_findings
from .counting import greedy_counts
from .result import RestorationResult, make_result

__all__ = ["bias_corrected", "bias_impact", "llg", "llg_impact"]


def llg_impact(scores: np.ndarray, batch_size: int) -> float:
    """LLG's impact estimate from the row sums :math:`s_i = \\sum_j \\nabla W_{ij}` (reference implementation):

    .. math::  m = \\frac{1}{K} \\Big(\\sum_{i:\\, s_i < 0} s_i\\Big) \\Big(1 + \\frac1C\\Big).

    The mean negative mass per instance, scaled up by :math:`1 + 1/C` for the positive contribution every
    instance also makes to the other classes' sums. 0 when no sum is negative.
    """
    c = scores.shape[0]
    return float(scores[scores < 0].sum()) / batch_size * (1.0 + 1.0 / c)


def bias_impact(grad_bias: np.ndarray, batch_size: int) -> float:
    """Impact estimate on the bias gradient.

    For mean CE an instance :math:`k` of class :math:`i` adds :math:`(p_{k,i} - 1)/K` to :math:`\\nabla b_i`
    and :math:`p_{k,j}/K` to every other :math:`\\nabla b_j`. Model every instance's own-class probability as
    :math:`\\bar p` and its remaining mass as spread evenly over the other :math:`C - 1` classes; then
    :math:`\\nabla b_i = \\frac{1 - \\bar p}{K (C-1)} (K - C n_i)`, so one instance moves :math:`\\nabla b_i` by

    .. math:: m = -\\frac{(1 - \\bar p)\\, C}{K (C - 1)},

    and the negative entries (the :math:`P` present classes) sum to :math:`-(1-\\bar p)(C-P)/(C-1)`. Solving
    for :math:`1 - \\bar p` gives the estimate

    .. math:: m = \\frac{C}{K\\,(C - P)} \\sum_{i:\\, \\nabla b_i < 0} \\nabla b_i

    (:math:`C - P` floored at 1). It is exact when the model's outputs are uniform (:math:`\\bar p = 1/C`); for
    :math:`P = 1` its factor :math:`C/(C-1) = 1 + 1/(C-1)` is close to LLG's :math:`1 + 1/C`. 0 when no entry is
    negative. (breaching's ``bias-corrected`` uses the factor 1, see :func:`bias_corrected`.)
    """
    c = grad_bias.shape[0]
    negative = grad_bias < 0
    return float(grad_bias[negative].sum()) * c / (batch_size * max(c - int(negative.sum()), 1))


@restoration_method("llg", requires=("grad_weight",))
def llg(inputs: LayerInputs) -> RestorationResult:
    """LLG (the paper's attack without auxiliary data; "v1" in the authors' code).

    Scores :math:`s_i = \\sum_j \\nabla W_{ij}` (row sums); present iff :math:`s_i < 0`; impact from
    :func:`llg_impact`; counts by :func:`label_restore.counting.greedy_counts`: one per present class
    (subtracting :math:`m` from its score), then :math:`K - P` greedy steps, each giving an instance to the class
    with the most negative current score and subtracting :math:`m` from *that* class's score (heap,
    :math:`O(C + K \\log C)`). If more than ``K`` sums are negative, ``raw_counts`` (one per negative class)
    exceeds ``K`` and ``counts`` keeps the ``K`` most negative.

    Args (public call): ``grad_weight`` :math:`(C, M)` (required), ``batch_size`` :math:`K`.

    Returns:
        :class:`RestorationResult` with ``details = {"scores": s, "impact": m}``; ``diagnostics`` notes raw counts
        above ``K`` (:func:`label_restore.consistency.presence_findings`).
    """
    s = inputs.required("grad_weight").sum(dim=1, dtype=torch.float64).numpy()
    k = inputs.batch_size
    impact = llg_impact(s, k)
    raw, counts = greedy_counts(s, k, impact)
    return make_result("llg", counts, raw, s < 0, k, {"scores": s, "impact": impact}, presence_findings(raw, k))


@restoration_method("bias_corrected", requires=("grad_bias",))
def bias_corrected(inputs: LayerInputs) -> RestorationResult:
    """LLG's greedy counting on the bias gradient :math:`\\nabla b` instead of the row sums of :math:`\\nabla W`.

    :math:`\\nabla b_i = \\frac1K \\sum_k (p_{k,i} - y_{k,i})` does not depend on the embeddings, so neither
    their sign (activation) nor their norm enters. Present iff :math:`\\nabla b_i < 0` (more instances than
    the class's total predicted probability mass); impact from :func:`bias_impact`; counts by
    :func:`label_restore.counting.greedy_counts` (same rules as :func:`llg`). Exact when the model's outputs are
    uniform (e.g. a freshly initialised final layer with tiny weights).

    **Not breaching's** ``bias-corrected`` (``label_strategy="bias-corrected"`` in JonasGeiping/breaching,
    ``breaching/attacks/base_attack.py``, ``_recover_label_information``, marked work in progress there). Both
    take the classes with :math:`\\nabla b_i < 0` as present (one instance each) and run the same greedy
    second stage. They differ in

    1. the impact: breaching uses :math:`m_B = \\frac1K \\sum_{i:\\, \\nabla b_i < 0} \\nabla b_i`, ours
       :math:`m = \\frac{C}{C-P}\\, m_B` (:func:`bias_impact`). :math:`m_B` leaves out the mass the present
       classes' samples put on the other classes: with uniform outputs one instance moves :math:`\\nabla b_i` by
       :math:`-1/K = m`, while :math:`m_B = -\\frac{C-P}{C K}`, too small by the factor :math:`(C-P)/C`, so the
       remaining instances pile onto the most negative class. The two agree only for :math:`P \\ll C`.
       Measured on untrained 2-layer ReLU MLPs (random labels, 50 seeds, counts exactly right): ours / with
       :math:`m_B`: C=10, K=8: 49 / 32; C=100, K=64: 50 / 6; identical results for K <= 4 at C=10 and
       K <= 24 at C=100;
    2. more than ``K`` negative entries: breaching returns all of them as labels (more than ``K``); here
       ``raw_counts`` keeps them all and ``counts`` the ``K`` most negative;
    3. breaching averages :math:`\\nabla b` over several queries; here there is one gradient.

    Args (public call): ``grad_bias`` :math:`(C,)` (required), ``batch_size`` :math:`K`.

    Returns:
        :class:`RestorationResult` with ``details = {"scores": grad_bias, "impact": m}``; ``diagnostics`` holds the
        findings of :func:`label_restore.consistency.bias_gradient_findings` (more than ``K`` negative entries
        among them).
    """
    g = inputs.required("grad_bias").double().numpy().copy()
    k = inputs.batch_size
    impact = bias_impact(g, k)
    raw, counts = greedy_counts(g, k, impact)
    details = {"scores": g, "impact": impact}
    return make_result("bias_corrected", counts, raw, g < 0, k, details, bias_gradient_findings(g, k))
