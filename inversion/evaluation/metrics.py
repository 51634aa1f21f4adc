"""Per-image PSNR and SSIM of image batches in [0, 1]."""

from __future__ import annotations

import torch
from torch import Tensor

from inversion.utils.errors import InputError

__all__ = ["PSNR_CAP_DB", "SSIM_WINDOW", "check_pair", "psnr", "psnr_from_mse", "ssim"]

# PSNR of an exact match is +inf. Where one number per image must be finite (the assignment's
# costs, the reported values and their mean), PSNR is capped here: an MSE of 1e-10, far
# below the 8-bit quantisation step (about 48 dB for an error of one level everywhere).
PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11  # Gaussian window, sigma 1.5 (kornia's), as in Wang et al. (2004)


def check_pair(x: Tensor, y: Tensor) -> None:
    """ValueError unless ``x`` and ``y`` are image batches (B, C, H, W) of the same shape."""
    if x.dim() != 4 or x.shape != y.shape:
        raise InputError(
            f"expected two image batches (B, C, H, W) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )


def psnr_from_mse(mse: Tensor, max_value: float = 1.0) -> Tensor:
    """PSNR in dB, ``10 log10(max_value^2 / mse)``, elementwise; +inf where ``mse`` is 0."""
    return 10 * torch.log10(max_value**2 / mse)


def psnr(x: Tensor, y: Tensor, *, max_value: float = 1.0) -> Tensor:
    """Per-image PSNR in dB, (B,) float64, of image batches (B, C, H, W) with values in
    [0, ``max_value``]; the MSE is the mean over C, H, W (in float64). Identical images
    give +inf (see PSNR_CAP_DB for where it is capped)."""
    check_pair(x, y)
    mse = (x.double() - y.double()).square().flatten(1).mean(1)
    return psnr_from_mse(mse, max_value)


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image SSIM, (B,), of image batches (B, C, H, W) in [0, 1] (H, W >= 11): the
    standard Gaussian-window SSIM of Wang et al. (2004) (window 11, sigma 1.5, K1 = 0.01,
    K2 = 0.03, data range 1, no extra epsilon) over the valid region, i.e. the windows that
    lie inside the image (as the reference MATLAB code), averaged over channels and positions.
    Identical images give 1."""
    check_pair(x, y)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise InputError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}")
    import kornia  # here, not at import time: it takes half a second to load

    index = kornia.metrics.ssim(x, y, SSIM_WINDOW, max_val=1.0, eps=0.0, padding="valid")
    return index.flatten(1).mean(1)
