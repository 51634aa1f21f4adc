"""Evaluation of reconstructions: matching them to the true images, PSNR, SSIM, LPIPS, and a grid.

from inversion.evaluation import LPIPSMetric, evaluate_reconstruction, save_grid, unit_images
result = evaluate_reconstruction(recon, truth, spec.denormalize, lpips=LPIPSMetric(data_root))
save_grid(unit_images(truth, spec.denormalize),
          unit_images(recon, spec.denormalize)[result["permutation"]], run_dir / "grid.png")
"""

from __future__ import annotations

from inversion.evaluation.lpips_metric import LPIPSMetric
from inversion.evaluation.lpips_weights import LPIPSWeightsError
from inversion.evaluation.matching import match_images
from inversion.evaluation.metrics import PSNR_CAP_DB, psnr, ssim
from inversion.evaluation.report import evaluate_reconstruction, save_grid, unit_images

__all__ = [
    "PSNR_CAP_DB",
    "LPIPSMetric",
    "LPIPSWeightsError",
    "evaluate_reconstruction",
    "match_images",
    "psnr",
    "save_grid",
    "ssim",
    "unit_images",
]
