"""Label-restoration metrics of the iLRG paper (as its released ``utils.get_irlg_res`` computes them).

All are over all :math:`C` classes, absent ones included, for predicted counts :math:`\\hat n` and true
counts :math:`n` with :math:`K = \\sum_i n_i`:

- LeAcc (label existence accuracy) :math:`= \\frac1C \\sum_i [(\\hat n_i > 0) = (n_i > 0)]`
- LnAcc (label number accuracy) :math:`= \\frac1C \\sum_i [\\hat n_i = n_i]`
- IRec (instance recall) :math:`= \\frac1K \\sum_i \\min(\\hat n_i, n_i)`

The paper scores iLRG's *raw* counts (``RestorationResult.raw_counts``, before the sum-to-K correction).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import LabelRestoreInputError

__all__ = ["counts_from_labels", "label_metrics"]


def _int_vector(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise LabelRestoreInputError(f"{name} must be 1-D; got shape {arr.shape}.")
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise LabelRestoreInputError(f"{name} must hold integers; got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating) and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr))):
        raise LabelRestoreInputError(f"{name} must hold whole numbers; got {arr!r}.")
    return arr.astype(np.int64)


def counts_from_labels(labels: Any, num_classes: int) -> np.ndarray:
    """Per-class counts of a label list.

    Args:
        labels: integer class indices, shape :math:`(K,)` (tensor, array or list).
        num_classes: :math:`C`.

    Returns:
        int64 counts, shape :math:`(C,)`.

    Example:
        >>> counts_from_labels([2, 0, 2, 2, 0], 3).tolist()
        [2, 0, 3]
    """
    lab = _int_vector("labels", labels)
    if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
        raise LabelRestoreInputError(
            f"labels must lie in [0, {num_classes - 1}]; got min {lab.min()}, max {lab.max()}."
        )
    return np.bincount(lab, minlength=num_classes).astype(np.int64)


def label_metrics(pred_counts: Any, true_counts: Any) -> dict[str, float | bool]:
    """LeAcc, LnAcc, IRec and the mean absolute count error of predicted counts, and whether they sum to ``K``.

    ``count_mae`` is :math:`\\frac1C \\sum_c |\\hat n_c - n_c|` (samples per class; 0 when exact).

    Args:
        pred_counts: restored counts :math:`\\hat n`, shape :math:`(C,)` (e.g. ``result.raw_counts``).
        true_counts: true counts :math:`n`, shape :math:`(C,)`, non-negative, :math:`K = \\sum n \\ge 1`.

    Returns:
        ``{"LeAcc": float, "LnAcc": float, "IRec": float, "count_mae": float, "sums_to_k": bool}``.

    Example:
        >>> label_metrics([2, 1, 0, 0], [2, 0, 1, 0])
        {'LeAcc': 0.5, 'LnAcc': 0.5, 'IRec': 0.6666666666666666, 'count_mae': 0.5, 'sums_to_k': True}
    """
    pred = _int_vector("pred_counts", pred_counts)
    true = _int_vector("true_counts", true_counts)
    if pred.shape != true.shape:
        raise LabelRestoreInputError(f"pred_counts has shape {pred.shape} but true_counts has shape {true.shape}.")
    if pred.size == 0:
        raise LabelRestoreInputError("counts must cover at least one class.")
    if true.min() < 0 or pred.min() < 0:
        raise LabelRestoreInputError("counts must be non-negative.")
    k = int(true.sum())
    if k < 1:
        raise LabelRestoreInputError("true_counts must sum to K >= 1.")
    return {
        "LeAcc": float(np.mean((pred > 0) == (true > 0))),
        "LnAcc": float(np.mean(pred == true)),
        "IRec": float(np.minimum(pred, true).sum() / k),
        "count_mae": float(np.abs(pred - true).mean()),
        "sums_to_k": bool(int(pred.sum()) == k),
    }
