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

Noise (:func:`estimate_gradient_noise`): every sample's output gradient :math:`p_k - y_k` sums to 0 over the
:math:`C` classes, so each column of :math:`\\nabla W` and :math:`\\nabla b` sums to 0 over the classes (also after
DP-SGD's per-sample clipping, which scales whole samples). Gaussian noise of std :math:`\\sigma` per entry (DP-SGD
adds :math:`N(0, (\\sigma_{dp} c / K)^2)` to the mean gradient) makes each of these :math:`M + 1` sums
:math:`N(0, C\\sigma^2)`, whatever the signal: :math:`\\hat\\sigma^2 = \\overline{s^2} / C` is unbiased, with the
relative spread :math:`\\sqrt{2/(M+1)}` of a chi-square. The counts inherit it through
:math:`n = \\sum_k p_k - K \\nabla b`: at least :math:`K\\hat\\sigma` samples per class. Float32 rounding of a clean
gradient gives :math:`\\hat\\sigma \\le 3.7\\,\\epsilon \\cdot` RMS entry (FCN-3, LeNet-5; K = 1 ... 64; 3 seeds
each), below :data:`ROUNDING_FACTOR`. The counts are flagged as noise-dominated when the noise alone is expected to
move at least :data:`MAX_MISCOUNTED_CLASSES` of the :math:`C` counts across a rounding boundary
(:func:`max_count_noise`: :math:`K\\hat\\sigma` above 0.26 samples for C = 10, 0.18 for C = 100). The methods do not
run this check themselves: :func:`inversion.restore.restore_from_update` runs it for every method
(:func:`with_noise_estimate`), with the class sums a FedAvg client's weight decay adds subtracted.

What no check can see: a gradient of :math:`K'` samples restored with ``batch_size`` a multiple :math:`mK'`
(the mean gradient of a batch equals that of the batch with every sample repeated :math:`m` times, so the
inputs are consistent and iLRG returns :math:`m` times the counts), and a moderate rescaling (x2) of
gradients whose :math:`\\sum|\\nabla b|` stays below 2.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from .result import RestorationResult

__all__ = [
    "InconsistentGradientWarning",
    "NoiseEstimate",
    "NoisyGradientWarning",
    "bias_gradient_findings",
    "class_sums",
    "count_system_findings",
    "estimate_gradient_noise",
    "max_count_noise",
    "noise_findings",
    "presence_findings",
    "rank_findings",
    "with_noise_estimate",
]

#: :math:`\sum_i |\nabla b_i| \le 2` for a mean cross-entropy gradient; the slack covers float32 rounding.
MAX_BIAS_GRADIENT_L1 = 2.0 * (1.0 + 1e-3)

#: Largest count-system residual :math:`\lVert A n - y\rVert_2` (in samples) still taken as consistent.
MAX_RESIDUAL = 0.5

#: Largest sum of the non-negative float counts, as a multiple of ``K``, still taken as consistent.
MAX_COUNT_MASS = 2.0

#: The counts are noise-dominated when the noise alone is expected to move this many classes' counts by 0.5 or more.
MAX_MISCOUNTED_CLASSES = 0.5

#: A clean gradient's class sums, from float rounding alone, give :math:`\hat\sigma` below this many machine
#: epsilons of the gradients' dtype times their RMS entry (measured: at most 3.7).
ROUNDING_FACTOR = 8.0


class InconsistentGradientWarning(UserWarning):
    """The gradients, the batch size and the restored counts contradict each other (see
    :mod:`label_restore.consistency`): the restored counts are unreliable. The findings are also in
    ``RestorationResult.diagnostics``."""


class NoisyGradientWarning(InconsistentGradientWarning):
    """The gradients are dominated by noise (:func:`estimate_gradient_noise`): the restored counts are unreliable.
    The finding is also in ``RestorationResult.diagnostics`` and the estimate in ``details["noise"]``."""


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


def class_sums(grad_weight: Any, grad_bias: Any) -> np.ndarray:
    """The final-layer gradients summed over the classes: 0 for a softmax cross-entropy gradient without noise.

    Args:
        grad_weight: :math:`\\nabla W`, shape :math:`(C, M)`, or None.
        grad_bias: :math:`\\nabla b`, shape :math:`(C,)`, or None.

    Returns:
        float64, shape :math:`(M + 1,)`: :math:`\\sum_c \\nabla W_{c,m}` for each column :math:`m`, then
        :math:`\\sum_c \\nabla b_c` (the parts whose gradient is None are left out).

    Example:
        >>> class_sums(np.array([[0.5, -1.0], [-0.5, 1.0]]), np.array([0.25, -0.25])).tolist()
        [0.0, 0.0, 0.0]
    """
    parts = [np.asarray(g, dtype=np.float64) for g in (grad_weight, grad_bias) if g is not None]
    return np.concatenate([part.sum(axis=0).reshape(-1) for part in parts])


def max_count_noise(num_classes: int) -> float:
    """The std of the counts' noise (samples per class) above which they are noise-dominated: the noise alone
    moves :data:`MAX_MISCOUNTED_CLASSES` of the ``num_classes`` counts by 0.5 or more, in expectation.

    Example:
        >>> round(max_count_noise(10), 3), round(max_count_noise(100), 3)
        (0.255, 0.178)
    """
    return 0.5 / NormalDist().inv_cdf(1.0 - MAX_MISCOUNTED_CLASSES / (2 * num_classes))


@dataclass(frozen=True)
class NoiseEstimate:
    """The noise level of final-layer gradients, estimated from their class sums (module docstring).

    Every value is a Python float (``dataclasses.asdict`` gives a JSON-ready dict, which
    :func:`with_noise_estimate` stores as ``details["noise"]``).

    Attributes:
        std: :math:`\\hat\\sigma`, the noise's std per gradient entry, in the gradients' units (for a FedAvg update,
            those of the pseudo-gradient :math:`-\\Delta / (\\eta S)`).
        sums: how many class sums it is estimated from (:math:`M + 1`; its relative spread is
            :math:`\\sqrt{2/\\text{sums}}`).
        rounding_floor: the :math:`\\hat\\sigma` float rounding alone can give (:data:`ROUNDING_FACTOR` machine
            epsilons times the RMS entry, plus the caller's share); a ``std`` at or below it is no evidence of noise.
        signal_rms: the RMS per entry of the gradients without the noise,
            :math:`\\sqrt{\\max(0, \\overline{g^2} - \\hat\\sigma^2)}`.
        snr: ``signal_rms / std`` (inf without noise).
        count_noise: :math:`K\\hat\\sigma`, the counts' noise in samples per class (a lower bound for the methods
            that also read :math:`\\nabla W`).
        max_count_noise: :func:`max_count_noise` for this :math:`C`.
        noise_dominated: ``count_noise > max_count_noise`` and ``std > rounding_floor``.
    """

    std: float
    sums: int
    rounding_floor: float
    signal_rms: float
    snr: float
    count_noise: float
    max_count_noise: float
    noise_dominated: bool


def estimate_gradient_noise(
    grad_weight: Any,
    grad_bias: Any,
    batch_size: int,
    *,
    expected_sums: Any = None,
    rounding_floor: float = 0.0,
) -> NoiseEstimate:
    """Estimate the noise on final-layer gradients from their class sums, which are 0 without noise.

    Args:
        grad_weight: :math:`\\nabla W`, shape :math:`(C, M)` (numpy array or CPU tensor), or None.
        grad_bias: :math:`\\nabla b`, shape :math:`(C,)`, or None (not both None).
        batch_size: :math:`K`.
        expected_sums: what the class sums are without noise when not 0, shape :math:`(M + 1,)` as
            :func:`class_sums` (e.g. the weight decay of a FedAvg client's local steps); None: zeros.
        rounding_floor: the caller's share of the float rounding floor (e.g. a FedAvg delta's), added to this
            function's.

    Returns:
        :class:`NoiseEstimate`.

    Example:
        A gradient with Gaussian noise of std 0.01 per entry, C = 10, M = 4000, K = 32:

        >>> rng = np.random.default_rng(0)
        >>> signal = rng.normal(size=(10, 4001))
        >>> signal -= signal.mean(axis=0)  # its class sums are 0
        >>> noisy = signal + rng.normal(scale=0.01, size=signal.shape)
        >>> estimate = estimate_gradient_noise(noisy[:, :-1], noisy[:, -1], 32)
        >>> round(estimate.std, 4), round(estimate.count_noise, 2), estimate.noise_dominated
        (0.01, 0.32, True)
    """
    given = [np.asarray(g) for g in (grad_weight, grad_bias) if g is not None]
    num_classes = given[0].shape[0]
    sums = class_sums(grad_weight, grad_bias)
    if expected_sums is not None:
        sums = sums - np.asarray(expected_sums, dtype=np.float64)
    std = math.sqrt(float(np.mean(sums**2)) / num_classes)
    mean_square = float(np.mean(np.concatenate([np.square(g, dtype=np.float64).reshape(-1) for g in given])))
    eps = max(float(np.finfo(g.dtype).eps) if np.issubdtype(g.dtype, np.floating) else 0.0 for g in given)
    floor = ROUNDING_FACTOR * eps * math.sqrt(mean_square) + float(rounding_floor)
    signal_rms = math.sqrt(max(0.0, mean_square - std**2))
    count_noise = batch_size * std
    threshold = max_count_noise(num_classes)
    return NoiseEstimate(
        std=std,
        sums=int(sums.size),
        rounding_floor=floor,
        signal_rms=signal_rms,
        snr=signal_rms / std if std > 0 else math.inf,
        count_noise=count_noise,
        max_count_noise=threshold,
        noise_dominated=bool(count_noise > threshold and std > floor),
    )


def noise_findings(estimate: NoiseEstimate) -> tuple[str, ...]:
    """One sentence with the numbers when the estimate says the counts are noise-dominated; else empty.

    Example:
        >>> import textwrap
        >>> estimate = NoiseEstimate(3.1e-3, 513, 4e-9, 2e-3, 0.65, 0.81, 0.255, True)
        >>> print(textwrap.fill(noise_findings(estimate)[0], 100))
        the gradient's noise std is estimated at 3.10e-03 per entry (from the 513 class sums that are 0
        without noise; the signal's RMS per entry is 2.00e-03, SNR 0.65): the counts' noise is at least 0.81
        samples per class, above 0.26 (then the noise alone miscounts half a class, in expectation); these
        counts are unreliable
    """
    if not estimate.noise_dominated:
        return ()
    return (
        f"the gradient's noise std is estimated at {estimate.std:.2e} per entry (from the {estimate.sums} class sums "
        f"that are 0 without noise; the signal's RMS per entry is {estimate.signal_rms:.2e}, SNR {estimate.snr:.2g}): "
        f"the counts' noise is at least {estimate.count_noise:.2g} samples per class, above "
        f"{estimate.max_count_noise:.2g} (then the noise alone miscounts half a class, in expectation); these counts "
        "are unreliable",
    )


def with_noise_estimate(result: RestorationResult, estimate: NoiseEstimate) -> RestorationResult:
    """``result`` with the estimate in ``details["noise"]`` (a dict of :class:`NoiseEstimate`'s fields) and
    :func:`noise_findings` appended to ``diagnostics``."""
    return dataclasses.replace(
        result,
        details={**result.details, "noise": dataclasses.asdict(estimate)},
        diagnostics=result.diagnostics + noise_findings(estimate),
    )
