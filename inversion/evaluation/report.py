"""Score a reconstructed batch against the true one, and draw them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor

from inversion.evaluation.lpips_metric import LPIPSMetric
from inversion.evaluation.matching import match_images
from inversion.evaluation.metrics import PSNR_CAP_DB, psnr, ssim
from inversion.utils.errors import InputError
from inversion.utils.plotting import save_image_rows

__all__ = ["evaluate_reconstruction", "save_grid", "unit_images"]

Denormalize = Callable[[Tensor], Tensor]


def unit_images(images: Tensor, denormalize: Denormalize) -> Tensor:
    """Normalised images (B, C, H, W) -> (B, C, H, W) in [0, 1]: ``denormalize``, then clamp."""
    return denormalize(images.detach()).clamp(0, 1)


def evaluate_reconstruction(
    recon_norm: Tensor, truth_norm: Tensor, denormalize: Denormalize, *, lpips: LPIPSMetric | None, by: str = "psnr"
) -> dict:
    """Image metrics of a reconstruction of a batch, as a JSON-serialisable dict.

    Both batches (B, C, H, W) are in the model's normalised space; ``denormalize`` maps them
    to [0, 1] scale (e.g. ``DatasetSpec.denormalize``), and the result is clamped to [0, 1].
    Reconstructions are matched one-to-one to the true images (:func:`match_images`, ``by``),
    then scored per matched pair: PSNR in dB (capped at ``psnr_cap_db`` = PSNR_CAP_DB, so an
    exact match scores the cap and the mean stays finite), SSIM, and LPIPS (None if ``lpips``
    is None). Keys: ``matched_by``; ``permutation`` (reconstruction index matched to each
    true image); ``psnr_cap_db``; ``per_image`` (one dict per true image: ``index``,
    ``recon_index``, ``psnr``, ``ssim``, ``lpips``); ``mean`` (``psnr``, ``ssim``, ``lpips``
    over the images); ``lpips_backbone`` (where LPIPS's AlexNet weights came from, or None).
    """
    truth, recon = unit_images(truth_norm, denormalize), unit_images(recon_norm, denormalize)
    permutation = match_images(recon, truth, by=by)
    matched = recon[permutation]
    scores = {
        "psnr": psnr(truth, matched).clamp(max=PSNR_CAP_DB).tolist(),
        "ssim": ssim(truth, matched).tolist(),
        "lpips": lpips(truth, matched).tolist() if lpips is not None else None,
    }
    per_image = [
        {
            "index": i,
            "recon_index": int(permutation[i]),
            **{name: values[i] if values is not None else None for name, values in scores.items()},
        }
        for i in range(len(permutation))
    ]
    mean = {name: sum(values) / len(values) if values is not None else None for name, values in scores.items()}
    return {
        "matched_by": by,
        "permutation": permutation.tolist(),
        "psnr_cap_db": PSNR_CAP_DB,
        "per_image": per_image,
        "mean": mean,
        "lpips_backbone": lpips.backbone_source if lpips is not None else None,
    }


def save_grid(
    truth01: Tensor,
    recon01_matched: Tensor,
    path: str | Path,
    *,
    captions: Sequence[Sequence[str]] | None = None,
    title: str | None = None,
    max_columns: int = 16,
) -> Path:
    """PNG of the true images (top row) above their matched reconstructions (bottom row),
    both (B, C, H, W) in [0, 1] with ``recon01_matched[i]`` matched to ``truth01[i]`` (e.g.
    ``unit_images(recon, dn)[result["permutation"]]``). ``captions``: per row, one caption per
    image. Every pair is drawn, ``max_columns`` pairs per line (a larger batch wraps into further
    true/reconstructed line pairs). Returns the path written."""
    if truth01.shape != recon01_matched.shape:
        raise InputError(
            f"true images {tuple(truth01.shape)} and reconstructions {tuple(recon01_matched.shape)} differ in shape"
        )
    return save_image_rows(
        [truth01, recon01_matched],
        path,
        row_names=["true", "reconstructed"],
        captions=captions,
        title=title,
        max_columns=max_columns,
    )
