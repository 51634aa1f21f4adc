"""Integer counting rules shared by the methods.

- :func:`round_counts`: iLRG's float solution -> raw integer counts (the paper's rule), or clipped to ``K``.
- :func:`correct_to_sum`: make raw counts sum exactly to ``K`` by largest remainder (iLRG's ``counts``).
- :func:`ranked_cycle`: hand ``K`` instances out along a ranking, cycling (existence-only baselines).
- :func:`greedy_counts`: LLG's greedy counting with a per-instance impact (``llg`` and ``bias_corrected``).

All work on numpy arrays of shape :math:`(C,)`, vectorised; ties are always broken towards the lower class
index (stable sorts), so every rule is deterministic.
"""

from __future__ import annotations

import heapq

import numpy as np

from .errors import LabelRestoreInputError

__all__ = ["correct_to_sum", "greedy_counts", "ranked_cycle", "round_counts"]


def round_counts(float_counts: np.ndarray, batch_size: int, *, clip: bool = False) -> np.ndarray:
    """iLRG's integer counts from the least-squares solution.

    :math:`\\hat n_i = \\operatorname{round}(\\max(n_i, 0))`, then, where :math:`\\hat n_i > K`,
    :math:`\\hat n_i \\leftarrow 0` (the paper's released code: the *raw* counts the paper scores) or, with
    ``clip=True``, :math:`\\hat n_i \\leftarrow K` (what the sum-to-``K`` step starts from: a class whose float
    count exceeds the batch is the whole batch, not absent). Rounding is half-to-even (``np.rint``, like
    ``np.round``). Non-finite entries become 0.

    Args:
        float_counts: float solution :math:`n`, shape :math:`(C,)`.
        batch_size: :math:`K`.
        clip: counts above :math:`K` become :math:`K` instead of 0.

    Returns:
        int64 counts, shape :math:`(C,)`, each in :math:`[0, K]`.

    Example:
        >>> round_counts(np.array([2.4, -0.3, 2.5, 9.0, np.nan]), 5).tolist()
        [2, 0, 2, 0, 0]
        >>> round_counts(np.array([2.4, -0.3, 2.5, 9.0, np.nan]), 5, clip=True).tolist()
        [2, 0, 2, 5, 0]
    """
    f = np.asarray(float_counts, dtype=np.float64)
    r = np.rint(np.where(np.isfinite(f) & (f > 0), f, 0.0))
    r = np.where(r <= batch_size, r, float(batch_size) if clip else 0.0)
    return r.astype(np.int64)


def _stable_desc(keys: np.ndarray) -> np.ndarray:
    """Indices sorting ``keys`` descending; equal keys keep ascending index order."""
    return np.argsort(-keys, kind="stable")


def correct_to_sum(raw_counts: np.ndarray, float_counts: np.ndarray, batch_size: int) -> np.ndarray:
    """Adjust raw counts so that they sum exactly to ``K`` (largest-remainder rule against the float solution).

    Let :math:`\\Delta = K - \\sum_i \\hat n_i`.

    - :math:`\\Delta > 0` (too few): add one instance to each of the :math:`\\Delta` *present* classes
      (:math:`\\hat n_i > 0`) rounded down the most, i.e. with the largest :math:`n_i - \\hat n_i`. A class
      judged absent never receives one unless no class is present (then all classes are eligible). When
      :math:`\\Delta` exceeds the number of eligible classes the rule repeats (cycles):
      each eligible class gets :math:`\\lfloor\\Delta/E\\rfloor`, the top :math:`\\Delta \\bmod E` one more.
    - :math:`\\Delta < 0` (too many): remove one instance from each of the :math:`|\\Delta|` classes rounded
      up the most (largest :math:`\\hat n_i - n_i`) among those with a count :math:`> 0`, so no count ever
      becomes negative; cycling as above, a class dropping out once its count reaches 0.

    Ties go to the lower class index. (The released iLRG code adds to ``inds[:num_mod]`` with a negative
    ``num_mod``, i.e. to all but :math:`|\\Delta|` classes, and can decrement a zero count to -1; neither
    happens here.)

    Args:
        raw_counts: int counts :math:`\\hat n` (>= 0), shape :math:`(C,)` (iLRG passes
            ``round_counts(float_counts, K, clip=True)``).
        float_counts: the float solution :math:`n` they were rounded from, shape :math:`(C,)`
            (non-finite entries are treated as 0).
        batch_size: :math:`K`.

    Returns:
        int64 counts, shape :math:`(C,)`, non-negative, summing to ``K``.

    Example:
        >>> correct_to_sum(np.array([1, 1, 1, 0]), np.array([1.2, 0.6, 1.4, 0.0]), 5).tolist()
        [2, 1, 2, 0]
        >>> correct_to_sum(np.array([1, 1, 1, 0]), np.array([1.2, 0.6, 1.4, 0.0]), 4).tolist()
        [1, 1, 2, 0]
    """
    raw = np.asarray(raw_counts, dtype=np.int64)
    if raw.min(initial=0) < 0:
        raise LabelRestoreInputError("raw_counts must be non-negative")
    f = np.nan_to_num(np.asarray(float_counts, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    counts = raw.copy()
    delta = int(batch_size) - int(raw.sum())
    if delta > 0:
        eligible = np.flatnonzero(raw > 0)
        if eligible.size == 0:
            eligible = np.arange(raw.shape[0])
        order = eligible[_stable_desc(f[eligible] - raw[eligible])]  # rounded down the most first
        rounds, rest = divmod(delta, order.size)
        counts[order] += rounds
        counts[order[:rest]] += 1
    elif delta < 0:
        excess = -delta  # < raw.sum(), so always removable
        # t full rounds remove min(raw_i, t) from every class; find the largest t with sum <= excess.
        lo, hi = 0, int(raw.max())
        while lo < hi:  # binary search, O(log K) steps of O(C)
            mid = (lo + hi + 1) // 2
            if int(np.minimum(raw, mid).sum()) <= excess:
                lo = mid
            else:
                hi = mid - 1
        counts -= np.minimum(raw, lo)
        rest = excess - int(np.minimum(raw, lo).sum())
        eligible = np.flatnonzero(raw > lo)  # still positive after the full rounds; rest < eligible.size
        order = eligible[_stable_desc(raw[eligible] - f[eligible])]  # rounded up the most first
        counts[order[:rest]] -= 1
    return counts


def ranked_cycle(order: np.ndarray, batch_size: int, num_classes: int) -> np.ndarray:
    """Give ``K`` instances to the classes in ``order``: one each down the ranking, cycling when ``K`` exceeds it.

    With :math:`L` = ``len(order)``, class ``order[r]`` gets :math:`\\lfloor K/L\\rfloor + [r < K \\bmod L]`.
    So for :math:`K \\le L` the first ``K`` ranked classes get one instance each.

    Args:
        order: class indices, best first, shape :math:`(L,)`, :math:`L \\ge 1`, no repeats.
        batch_size: :math:`K`.
        num_classes: :math:`C`.

    Returns:
        int64 counts, shape :math:`(C,)`, summing to ``K`` (0 for classes not in ``order``).

    Example:
        >>> ranked_cycle(np.array([2, 0]), 5, 4).tolist()
        [2, 0, 3, 0]
    """
    order = np.asarray(order, dtype=np.int64)
    counts = np.zeros(num_classes, dtype=np.int64)
    rounds, rest = divmod(int(batch_size), order.size)
    counts[order] = rounds + (np.arange(order.size) < rest)
    return counts


def greedy_counts(scores: np.ndarray, batch_size: int, impact: float) -> tuple[np.ndarray, np.ndarray]:
    """LLG's counting (Wainakh et al., PETS 2022, Alg. "LLG"), shared by ``llg`` and ``bias_corrected``.

    With per-class scores :math:`s` (negative for classes in the batch) and the estimated per-instance
    impact :math:`m < 0` (how much one instance of class :math:`i` lowers :math:`s_i`):

    1. every class with :math:`s_i < 0` is present: it gets one instance and :math:`s_i \\leftarrow s_i - m`;
    2. the remaining :math:`K - |\\{s < 0\\}|` instances go one at a time to
       :math:`j = \\arg\\min_i s_i` (lowest index on ties), updating *that* class: :math:`s_j \\leftarrow s_j - m`.

    Step 2 runs on a binary heap: :math:`O(C + (K - P) \\log C)` for :math:`P` present classes (a Python loop
    over the :math:`K - P` greedy steps; it reproduces the sequential ``argmin`` loop exactly, including the
    floating-point updates). If :math:`m = 0` (no negative score) all remaining instances go to the single
    most negative class, as in the reference implementation.

    If more than ``K`` classes have negative scores, the method's own output (``raw_counts``: one per
    negative class) exceeds ``K``; ``counts`` then keeps the ``K`` most negative of them.

    Args:
        scores: :math:`s`, shape :math:`(C,)`.
        batch_size: :math:`K`.
        impact: :math:`m` (<= 0 in the methods here).

    Returns:
        ``(raw_counts, counts)``: int64, shape :math:`(C,)`; ``counts`` sums to ``K``.
    """
    s = np.asarray(scores, dtype=np.float64)
    k = int(batch_size)
    present = s < 0
    num_present = int(present.sum())
    if num_present >= k:
        raw = present.astype(np.int64)
        idx = np.flatnonzero(present)
        keep = idx[np.argsort(s[idx], kind="stable")[:k]]
        counts = np.zeros_like(raw)
        counts[keep] = 1
        return raw, counts
    counts = present.astype(np.int64)
    values = np.where(present, s - impact, s)
    heap = list(zip(values.tolist(), range(s.shape[0])))
    heapq.heapify(heap)
    for _ in range(k - num_present):
        value, j = heap[0]
        counts[j] += 1
        heapq.heapreplace(heap, (value - impact, j))
    return counts.copy(), counts
