"""Sign-based existence baselines: extended iDLG and GradInversion's label restoration.

Both read the sign of the weight gradient of the final layer. With the mean cross-entropy,
:math:`\\nabla W_i = \\frac1K \\sum_k (p_{k,i} - y_{k,i})\\, e_k^\\top`: a class absent from the batch has only
positive coefficients :math:`p_{k,i}`, so with non-negative embeddings (ReLU before the final layer) its row is
non-negative; a present class has the negative coefficient :math:`p_{k,i} - 1` of its own samples. With
activations that can go negative (SiLU, LeakyReLU, a final BatchNorm) the argument breaks.
"""

from __future__ import annotations

import numpy as np
import torch

from ._inputs import LayerInputs
from ._method import restoration_method
from .consistency import presence_findings
from .counting import ranked_cycle
from .result import RestorationResult, make_result

__all__ = ["fill_present", "gi", "idlg"]


def fill_present(present: np.ndarray, scores: np.ndarray, batch_size: int) -> np.ndarray:
    """Counts of an existence-only method: one per present class, padded or trimmed to ``K`` along ``scores``.

    The present classes are ranked by ``scores`` ascending (best first, lower index on ties) and
    :func:`label_restore.counting.ranked_cycle` hands out the ``K`` instances along that ranking:

    - :math:`P = K`: one each;
    - :math:`P > K`: the ``K`` best-ranked present classes get one each (trim);
    - :math:`0 < P < K`: each present class gets :math:`\\lfloor K/P \\rfloor`, the
      :math:`K \\bmod P` best-ranked one more (pad by cycling over the present classes; absent classes get none);
    - :math:`P = 0`: the same cycling over all classes ranked by ``scores``.

    Args:
        present: bool, shape :math:`(C,)`.
        scores: float, shape :math:`(C,)`, lower = more confidently present.
        batch_size: :math:`K`.

    Returns:
        int64 counts, shape :math:`(C,)`, summing to ``K``.
    """
    candidates = np.flatnonzero(present)
    if candidates.size == 0:
        candidates = np.arange(present.shape[0])
    order = candidates[np.argsort(scores[candidates], kind="stable")]
    return ranked_cycle(order, batch_size, present.shape[0])


@restoration_method("idlg", requires=("grad_weight",))
def idlg(inputs: LayerInputs) -> RestorationResult:
    """Extended iDLG (Zhao et al. 2020, extended to batches as in the iLRG paper's comparison).

    Class :math:`i` is present iff the row sum :math:`s_i = \\sum_j \\nabla W_{ij} < 0`.

    Counts (the method only tells existence): one per present class, padded/trimmed to ``K`` by
    :func:`fill_present` along the row sums (most negative first): too many present classes keeps the ``K``
    most negative; too few cycles over the present classes (most negative first), so repeated labels are
    spread evenly rather than counted; none present cycles over all classes by row sum.

    Args (public call): ``grad_weight`` :math:`(C, M)` (required), ``batch_size`` :math:`K`.

    Returns:
        :class:`RestorationResult`; ``raw_counts`` is the 0/1 presence; ``details = {"scores": s}``;
        ``diagnostics`` notes more present classes than ``K`` (:func:`label_restore.consistency.presence_findings`).
    """
    s = inputs.required("grad_weight").sum(dim=1, dtype=torch.float64).numpy()
    present = s < 0
    counts = fill_present(present, s, inputs.batch_size)
    raw = present.astype(np.int64)
    findings = presence_findings(raw, inputs.batch_size)
    return make_result("idlg", counts, raw, present, inputs.batch_size, {"scores": s}, findings)


@restoration_method("gi", requires=("grad_weight",))
def gi(inputs: LayerInputs) -> RestorationResult:
    """GradInversion's batch label restoration (Yin et al., CVPR 2021).

    Class :math:`i` is present iff the row minimum :math:`m_i = \\min_j \\nabla W_{ij} < 0`.

    Counts (the paper's rule): rank all classes by :math:`m_i`, most negative first, and take the top ``K``
    — one instance each for the ``K`` most negative (:math:`K \\le C`; GradInversion assumes no repeated
    labels), cycling through the ranking when :math:`K > C`
    (:func:`label_restore.counting.ranked_cycle`). So the counts may give an instance to a class with
    :math:`m_i \\ge 0` (fewer than ``K`` negative rows) or drop a present one (more than ``K``).

    Args (public call): ``grad_weight`` :math:`(C, M)` (required), ``batch_size`` :math:`K`.

    Returns:
        :class:`RestorationResult`; ``raw_counts`` is the 0/1 presence; ``details = {"scores": m}``;
        ``diagnostics`` notes more present classes than ``K`` (:func:`label_restore.consistency.presence_findings`).
    """
    m = inputs.required("grad_weight").amin(dim=1).double().numpy()
    present = m < 0
    order = np.argsort(m, kind="stable")
    counts = ranked_cycle(order, inputs.batch_size, m.shape[0])
    raw = present.astype(np.int64)
    findings = presence_findings(raw, inputs.batch_size)
    return make_result("gi", counts, raw, present, inputs.batch_size, {"scores": m}, findings)
