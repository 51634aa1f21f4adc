"""The value every restoration method returns: per-class counts, the label list, and diagnostics."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["RestorationResult", "labels_from_counts", "make_result"]


def labels_from_counts(counts: np.ndarray) -> np.ndarray:
    """Expand per-class counts into the sorted label list.

    Args:
        counts: non-negative integer counts, shape :math:`(C,)`.

    Returns:
        int64 labels, shape :math:`(\\sum_c n_c,)`: class ``c`` repeated ``counts[c]`` times, ascending.

    Example:
        >>> labels_from_counts(np.array([2, 0, 3])).tolist()
        [0, 0, 2, 2, 2]
    """
    counts = np.asarray(counts, dtype=np.int64)
    return np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts)


@dataclass(frozen=True, eq=False)
class RestorationResult:
    """Outcome of one label restoration.

    Attributes:
        counts: int64, shape :math:`(C,)`: instances per class, non-negative, summing exactly to the batch
            size ``K``. This is what stage two (inversion with known labels) consumes.
        labels: int64, shape :math:`(K,)`: ``counts`` expanded, sorted (class ``c`` repeated ``counts[c]`` times).
        present: bool, shape :math:`(C,)`: the classes the method judges present in the batch.
        raw_counts: int64, shape :math:`(C,)`: the method's own counts *before* the sum-to-``K`` rule
            (for iLRG the rounded, clipped least-squares solution; this is what the iLRG paper scores).
            May not sum to ``K``.
        method: the method's registry name, e.g. ``"ilrg"``.
        seconds: wall time of the restoration itself (after input validation), in seconds.
        details: method-specific diagnostics (e.g. iLRG's float solution, which solver ran and the count
            system's residual).
        diagnostics: the findings of the consistency checks (:mod:`label_restore.consistency`), one sentence
            each with the numbers, e.g. ``"the non-negative float counts sum to 4.6e+06, batch size 8"``;
            empty when the inputs look consistent. A result with findings was announced by one
            :class:`~label_restore.consistency.InconsistentGradientWarning`.
    """

    counts: np.ndarray
    labels: np.ndarray
    present: np.ndarray
    raw_counts: np.ndarray
    method: str
    seconds: float = math.nan
    details: Mapping[str, Any] = field(default_factory=dict)
    diagnostics: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """Number of classes :math:`C`."""
        return int(self.counts.shape[0])

    @property
    def batch_size(self) -> int:
        """Number of restored instances :math:`K` (= ``counts.sum()``)."""
        return int(self.counts.sum())

    def __repr__(self) -> str:
        return (
            f"RestorationResult(method={self.method!r}, C={self.num_classes}, K={self.batch_size}, "
            f"present={int(self.present.sum())}, seconds={self.seconds:.4g})"
        )


def make_result(
    method: str,
    counts: np.ndarray,
    raw_counts: np.ndarray,
    present: np.ndarray,
    batch_size: int,
    details: Mapping[str, Any] | None = None,
    diagnostics: tuple[str, ...] = (),
) -> RestorationResult:
    """Build a :class:`RestorationResult`, checking its invariants.

    Raises:
        AssertionError: if ``counts`` is negative or does not sum to ``batch_size`` (a bug in the method).
    """
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    raw_counts = np.ascontiguousarray(raw_counts, dtype=np.int64)
    present = np.ascontiguousarray(present, dtype=bool)
    assert counts.ndim == 1 and counts.shape == raw_counts.shape == present.shape
    assert counts.min(initial=0) >= 0, "restored counts must be non-negative"
    assert int(counts.sum()) == batch_size, f"restored counts sum to {int(counts.sum())}, not K={batch_size}"
    return RestorationResult(
        counts=counts,
        labels=labels_from_counts(counts),
        present=present,
        raw_counts=raw_counts,
        method=method,
        details=dict(details or {}),
        diagnostics=tuple(diagnostics),
    )
