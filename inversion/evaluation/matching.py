"""One-to-one matching of reconstructions to the true images (restored labels come sorted
by class, so reconstruction i need not belong to true image i)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from inversion.evaluation.metrics import PSNR_CAP_DB, check_pair, psnr_from_mse
from inversion.utils.errors import InputError

__all__ = ["MATCH_BY", "match_images", "pairwise_mse"]

MATCH_BY = ("psnr", "mse")


def pairwise_mse(truth: Tensor, recon: Tensor) -> Tensor:
    """(B, B) float64 matrix whose [i, j] is the MSE (mean over C, H, W) between true image i
    and reconstruction j, for batches (B, C, H, W); pixel differences are taken directly
    (no ``|a|^2 + |b|^2 - 2ab`` cancellation), without a (B, B, C*H*W) tensor."""
    check_pair(truth, recon)
    flat_truth, flat_recon = truth.detach().double().flatten(1), recon.detach().double().flatten(1)
    distance = torch.cdist(flat_truth, flat_recon, compute_mode="donot_use_mm_for_euclid_dist")
    return distance.square() / flat_truth.shape[1]


def match_images(recon: Tensor, truth: Tensor, *, by: str = "psnr") -> np.ndarray:
    """The permutation ``perm`` (B,) int64 such that ``recon[perm[i]]`` is matched to
    ``truth[i]``, for batches (B, C, H, W) in [0, 1]: the one-to-one assignment
    (``scipy.optimize.linear_sum_assignment``) that maximises the total PSNR (``by="psnr"``,
    each PSNR capped at PSNR_CAP_DB) or minimises the total MSE (``by="mse"``)."""
    if by not in MATCH_BY:
        raise InputError(f"unknown matching criterion {by!r}; expected one of {MATCH_BY}")
    mse = pairwise_mse(truth, recon)
    cost = mse if by == "mse" else -psnr_from_mse(mse).clamp(max=PSNR_CAP_DB)
    from scipy.optimize import linear_sum_assignment  # here, not at import: scipy.optimize takes ~0.4 s

    _, columns = linear_sum_assignment(cost.cpu().numpy())  # rows come back as 0..B-1
    return columns.astype(np.int64)
