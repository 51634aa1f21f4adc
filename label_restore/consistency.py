"""Consistency checks: could the inputs be the mean cross-entropy gradient of a batch of ``K`` samples?

For the final layer :math:`z = W e + b` and the mean cross-entropy over :math:`K` samples,
:math:`\\nabla b = \\frac1K \\sum_k (p_k - y_k)` with :math:`p_k` a probability vector and :math:`y_k` one-hot.
Whatever the model and the batch,

- :math:`\\sum_i |\\nabla b_i| \\le 2` (each :math:`\\lVert p_k - y_k\\rVert_1 \\le 2`);
- :math:`\\nabla b_i < 0` only for a class with at least one sample (an absent class's entry is a mean of
  probabilities, :math:`\\ge 0`, also in floating point), so at most ``K`` entries are negative;
- :math:`\\nabla W = \\frac1K \\sum_k (p_k - y_k) e_k^\\top` has rank at most ``K``;

and iLRG's count system has the exact solution "the true counts" up to iLRG's approximation, so its residual
stays far below one sample and its float counts are non-negative up to a small error. Each check below returns
its findings (one sentence each, with the numbers; empty when the check passes). The methods store them in
``RestorationResult.diagnostics`` and :func:`label_restore._method.restoration_method` raises one
:class:`InconsistentGradientWarning` per call that has findings.

Thresholds, measured on the exact gradients of untrained models (MLPs with ReLU/SiLU and C = 10, 20, 100;
FCN-3 with C = 10; LeNet-5 with C = 100; K = 1 ... 256, 8 seeds each):

- :math:`\\sum|\\nabla b|`: at most 1.99 on correct inputs (the bound is 2); gradients x1e6 give >= 3.8e5.
- negative entries: at most ``K`` by the argument above; the gradient of 8 or 16 samples restored with
  ``batch_size=4`` had 5-16. The rank of :math:`\\nabla W` (checked by ``rlg``, which computes it anyway) is
  likewise at most ``K``.
- count-system residual (in samples): at most 1.5e-6 on correct inputs; Gaussian noise sigma = 0.1 on the
  gradients gives 0.07-2.5 (iLRG's counts break there).
- non-negative float counts: sum at most 1.19 K on correct inputs for C >= 10 (1.47 K at C = 5, where iLRG's
  counts were already wrong); x1e6 gives >= 1.9e5 K.

What no check can see: a gradient of :math:`K'` samples restored with ``batch_size`` a multiple :math:`mK'`
(the mean gradient of a batch equals that of the batch with every sample repeated :math:`m` times, so the
inputs are consistent and iLRG returns :math:`m` times the counts), and a moderate rescaling (x2) of
gradients whose :math:`\\sum|\\nabla b|` stays below 2.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "InconsistentGradientWarning",
    "bias_gradient_findings",
    "count_system_findings",
    "presence_findings",
    "rank_findings",
]

#: :math:`\sum_i |\nabla b_i| \le 2` for a mean cross-entropy gradient; the slack covers float32 rounding.
MAX_BIAS_GRADIENT_L1 = 2.0 * (1.0 + 1e-3)

#: Largest count-system residual :math:`\lVert A n - y\rVert_2` (in samples) still taken as consistent.
MAX_RESIDUAL = 0.5

#: Largest sum of the non-negative float counts, as a multiple of ``K``, still taken as consistent.
MAX_COUNT_MASS = 2.0


class InconsistentGradientWarning(UserWarning):
    """The gradients, the batch size and the restored counts contradict each other (see
    :mod:`label_restore.consistency`): the restored counts are unreliable. The findings are also in
    ``RestorationResult.diagnostics``."""


def bias_gradient_findings(grad_bias: np.ndarray, batch_size: int) -> tuple[str, ...]:
    """The two bounds every mean cross-entropy bias gradient obeys (module docstring).

    Args:
        grad_bias: :math:`\\nabla b`, shape :math:`(C,)`.
        batch_size: :math:`K`.

    Returns:
        Up to two findings.

    Example:
        >>> bias_gradient_findings(np.array([-0.5, 0.25, 0.25]), 2)
        ()
        >>> bias_gradient_findings(np.array([-5e5, 2.5e5, 2.5e5]), 2)
        ('sum |grad_bias| = 1e+06, above 2, the most a mean cross-entropy gradient can have ...',)
        >>> bias_gradient_findings(np.array([-0.2, -0.1, -0.1, 0.4]), 2)
        ('3 classes have a negative bias gradient but batch_size is 2 ...',)
    """
    g = np.asarray(grad_bias, dtype=np.float64)
    findings = []
    l1 = float(np.abs(g).sum())
    if l1 > MAX_BIAS_GRADIENT_L1:
        findings.append(
            f"sum |grad_bias| = {l1:.3g}, above 2, the most a mean cross-entropy gradient can have "
            "(scaled gradients or a sum-reduced loss?)"
        )
    negative = int((g < 0).sum())
    if negative > batch_size:
        findings.append(
            f"{negative} classes have a negative bias gradient but batch_size is {batch_size} "
            "(each such class holds at least one sample: is the batch larger?)"
        )
    return tuple(findings)


def count_system_findings(float_counts: np.ndarray, residual: float, batch_size: int) -> tuple[str, ...]:
    """iLRG's count system: its residual and the mass of its float solution.

    Args:
        float_counts: the solution :math:`n`, shape :math:`(C,)`.
        residual: :math:`\\lVert A n - y\\rVert_2` of the system (in samples).
        batch_size: :math:`K`.

    Returns:
        Up to two findings.

    Example:
        >>> count_system_findings(np.array([2.1, -0.1, 3.0]), 1e-7, 5)
        ()
        >>> for finding in count_system_findings(np.array([9e5, -9e5 + 5]), 0.8, 5):
        ...     print(finding)
        count-system residual 0.8 samples, above 0.5: no counts satisfy iLRG's equations ...
        the non-negative float counts sum to 9e+05, batch size 5
    """
    findings = []
    if residual > MAX_RESIDUAL:
        findings.append(
            f"count-system residual {residual:.3g} samples, above {MAX_RESIDUAL}: no counts satisfy iLRG's "
            "equations (a softmax cross-entropy bias gradient sums to 0; noise or another loss?)"
        )
    mass = float(np.maximum(np.nan_to_num(float_counts, nan=0.0), 0.0).sum())
    if mass > MAX_COUNT_MASS * batch_size:
        findings.append(f"the non-negative float counts sum to {mass:.3g}, batch size {batch_size}")
    return tuple(findings)


def presence_findings(raw_counts: np.ndarray, batch_size: int) -> tuple[str, ...]:
    """A method's own counts (one per class it finds present, or its greedy counts) exceed ``K``.

    Args:
        raw_counts: the method's raw counts, shape :math:`(C,)`.
        batch_size: :math:`K`.

    Returns:
        At most one finding.

    Example:
        >>> presence_findings(np.array([1, 1, 1, 0]), 2)
        ('raw counts sum to 3, batch size 2 (batch_size too small, or ...',)
    """
    total = int(np.asarray(raw_counts).sum())
    if total <= batch_size:
        return ()
    return (
        f"raw counts sum to {total}, batch size {batch_size} (batch_size too small, or the method fails on "
        "these gradients, e.g. idlg/gi/llg with embeddings that can be negative)",
    )


def rank_findings(rank: int, batch_size: int) -> tuple[str, ...]:
    """The weight gradient's numerical rank exceeds ``K`` (a sum of ``K`` rank-one terms has rank <= ``K``).

    Args:
        rank: numerical rank of :math:`\\nabla W` (:func:`label_restore.rlg.class_subspace`).
        batch_size: :math:`K`.

    Returns:
        At most one finding.

    Example:
        >>> rank_findings(8, 4)
        ('grad_weight has rank 8, above batch size 4 (is the batch larger, or the gradient noisy?)',)
    """
    if rank <= batch_size:
        return ()
    return (
        f"grad_weight has rank {rank}, above batch size {batch_size} (is the batch larger, or the gradient noisy?)",
    )
