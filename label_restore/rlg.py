"""RLG: label existence by SVD and linear programming (Dang et al., "Revealing and Protecting Labels in
Distributed Training", NeurIPS 2021; the iLRG repository's ``svd_infer``).

With the mean cross-entropy :math:`\\nabla W^\\top = \\frac1K \\sum_k e_k g_k^\\top` (:math:`M \\times C`) where
:math:`g_k = p_k - y_k` has exactly one negative entry, at the label of sample :math:`k`. So the row space of
:math:`\\nabla W^\\top` (spanned by its top right-singular vectors) contains, for every label :math:`i` in the
batch, a vector whose only negative entry is at :math:`i`; for an absent class such a vector generally does not
exist (when :math:`K < C`). No assumption on the activations is needed.

With :math:`V \\in \\mathbb R^{C \\times r}` the top-:math:`r` right-singular vectors of :math:`\\nabla W^\\top`
(:math:`r = \\min(\\operatorname{rank}, K)`, rank with the ``matrix_rank`` tolerance of the input's precision)
and :math:`c_i` the :math:`i`-th row of :math:`V`, class :math:`i` is tested by the linear program

.. math::

    t_i^* = \\max_{a \\in \\mathbb R^r,\\ t \\le 1}\\ t \\quad \\text{s.t.}\\quad c_i^\\top a \\le -1,\\qquad
    c_j^\\top a \\ge t \\ \\ (j \\ne i),

(``scipy.optimize.linprog``, HiGHS): the normalisation :math:`c_i^\\top a \\le -1` removes the scale and
:math:`t \\le 1` keeps the LP bounded. Class :math:`i` is present iff :math:`t_i^* > -` ``tol``, i.e. some vector
of the space is negative at :math:`i` and (up to ``tol``) non-negative elsewhere — the reference's feasibility
problem :math:`x \\cdot c_i < 0,\\ x \\cdot c_j \\ge 0`, with the best margin reported. (The reference first
filters candidates with a perceptron and accepts an LP solution by loose heuristics; here every class gets the
exact LP.) One LP per class: :math:`C` LPs with :math:`C` constraints and :math:`r + 1` variables.
"""

from __future__ import annotations

import numpy as np
import torch

from ._inputs import LayerInputs
from ._method import restoration_method
from .consistency import presence_findings, rank_findings
from .existence import fill_present
from .result import RestorationResult, make_result

__all__ = ["class_subspace", "rlg", "separation_margin"]


def class_subspace(grad_weight: torch.Tensor, batch_size: int) -> tuple[np.ndarray, int]:
    """Rows :math:`c_i` of the top-:math:`r` right-singular vectors of :math:`\\nabla W^\\top`, and the rank.

    Args:
        grad_weight: :math:`\\nabla W`, shape :math:`(C, M)`.
        batch_size: :math:`K` (caps :math:`r`).

    Returns:
        ``(V, rank)``: float64 :math:`V`, shape :math:`(C, r)` with :math:`r = \\min(\\operatorname{rank}, K)`,
        and the numerical rank of :math:`\\nabla W` itself, which counts singular values above
        :math:`\\sigma_{\\max} \\max(C, M)\\, \\epsilon` with :math:`\\epsilon` of the input's dtype (float32
        gradients carry float32 rounding noise). A batch of :math:`K` samples gives rank :math:`\\le K`.
    """
    eps = torch.finfo(grad_weight.dtype).eps
    g = grad_weight.to(torch.float64)
    u, s, _ = torch.linalg.svd(g, full_matrices=False)  # g = U S V^T, so right-singular of g^T = U
    if s.numel() == 0 or float(s[0]) == 0.0:
        return np.zeros((g.shape[0], 0)), 0
    rank = int((s > s[0] * max(g.shape) * eps).sum())
    return u[:, : min(rank, batch_size)].numpy(), rank


def separation_margin(subspace: np.ndarray, i: int) -> float:
    """:math:`t_i^*` of the module docstring's LP (``-inf`` if infeasible, e.g. :math:`c_i = 0`)."""
    c, r = subspace.shape
    if r == 0:
        return -np.inf
    a_ub = np.empty((c, r + 1))
    a_ub[:, :r] = -subspace
    a_ub[:, r] = 1.0
    a_ub[i, :r] = subspace[i]
    a_ub[i, r] = 0.0
    b_ub = np.zeros(c)
    b_ub[i] = -1.0
    cost = np.zeros(r + 1)
    cost[r] = -1.0
    from scipy.optimize import linprog  # here, not at import: scipy.optimize takes ~0.4 s to load

    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=[(None, None)] * r + [(None, 1.0)], method="highs")
    if res.status != 0:
        return -np.inf
    return float(res.x[r])


@restoration_method("rlg", requires=("grad_weight",))
def rlg(inputs: LayerInputs, *, tol: float = 1e-9) -> RestorationResult:
    """RLG label existence (see the module docstring).

    Counts (the method only tells existence): one per present class, padded/trimmed to ``K`` by
    :func:`label_restore.existence.fill_present` along the row norms :math:`\\lVert \\nabla W_i \\rVert`
    (largest first; activation-agnostic like RLG itself): too many present classes keeps the ``K`` with the
    largest gradient rows, too few cycles over the present classes.

    Args (public call): ``grad_weight`` :math:`(C, M)` (required), ``batch_size`` :math:`K`.

    Options:
        tol: class :math:`i` is present iff its LP margin :math:`t_i^* > -` ``tol`` (default ``1e-9``).

    Returns:
        :class:`RestorationResult`; ``raw_counts`` is the 0/1 presence;
        ``details = {"margins": t* (C,), "rank": r}``; ``diagnostics`` notes a rank of :math:`\\nabla W` above
        ``K`` and more present classes than ``K`` (:mod:`label_restore.consistency`).
    """
    k = inputs.batch_size
    grad_weight = inputs.required("grad_weight")
    v, rank = class_subspace(grad_weight, k)
    margins = np.array([separation_margin(v, i) for i in range(v.shape[0])])
    present = margins > -tol
    norms = grad_weight.to(torch.float64).norm(dim=1).numpy()
    counts = fill_present(present, -norms, k)
    raw = present.astype(np.int64)
    details = {"margins": margins, "rank": v.shape[1]}
    return make_result("rlg", counts, raw, present, k, details, rank_findings(rank, k) + presence_findings(raw, k))
