"""Evaluation: PSNR, SSIM, matching reconstructions to true images, the report and the grid."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from inversion.data import SPECS, default_data_root, ensure_pack
from inversion.evaluation import (
    PSNR_CAP_DB,
    LPIPSMetric,
    evaluate_reconstruction,
    match_images,
    psnr,
    save_grid,
    ssim,
    unit_images,
)


@pytest.fixture(scope="module")
def cifar(data_root) -> torch.Tensor:
    """The 20 real CIFAR-10 images of the foolbox pack, (20, 3, 32, 32) float32 in [0, 1]."""
    images, _, _ = ensure_pack("cifar10", data_root, fetch=False)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def lpips_metric() -> LPIPSMetric:
    return LPIPSMetric(default_data_root().resolve())


def _reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of two single-channel images (H, W) in [0, 1], written out from Wang et al. (2004):
    11x11 Gaussian window (sigma 1.5, normalised), valid windows only, C1 = 0.01^2, C2 = 0.03^2."""
    taps = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    window = np.outer(taps, taps) / np.outer(taps, taps).sum()

    def filtered(image: np.ndarray) -> np.ndarray:
        return np.einsum("ijhw,hw->ij", sliding_window_view(image, (11, 11)), window)

    mu_x, mu_y = filtered(x), filtered(y)
    var_x, var_y = filtered(x * x) - mu_x**2, filtered(y * y) - mu_y**2
    cov = filtered(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    index = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index.mean())


# --- PSNR -------------------------------------------------------------------------------------


def test_psnr_of_identical_images_is_inf(cifar):
    assert torch.isinf(psnr(cifar, cifar)).all() and (psnr(cifar, cifar) > 0).all()


def test_psnr_of_a_constant_offset_of_0_1_is_20_db(cifar):
    x = cifar * 0.9  # so that x + 0.1 stays in [0, 1]
    values = psnr(x, x + 0.1)
    assert values.shape == (20,) and values.dtype == torch.float64
    assert torch.allclose(values, torch.full_like(values, 20.0), atol=1e-4)  # 10 log10(1 / 0.01)


def test_psnr_hand_computed_mse_per_image():
    x = torch.zeros(2, 1, 2, 2)
    y = x.clone()
    y[0, 0, 0, 0] = 0.5  # MSE 0.25 / 4 = 1/16 -> 10 log10(16)
    y[1] = 0.5  # MSE 0.25 -> 10 log10(4)
    assert psnr(x, y).tolist() == pytest.approx([10 * math.log10(16), 10 * math.log10(4)], abs=1e-12)
    assert psnr(x * 255, y * 255, max_value=255.0).tolist() == pytest.approx(psnr(x, y).tolist(), abs=1e-9)


def test_metrics_reject_mismatched_batches():
    with pytest.raises(ValueError, match="same shape|one shape"):
        psnr(torch.zeros(2, 3, 16, 16), torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


# --- SSIM -------------------------------------------------------------------------------------


def test_ssim_of_identical_images_is_1(cifar):
    assert torch.allclose(ssim(cifar, cifar), torch.ones(20), atol=1e-6)


def test_ssim_matches_the_formula_of_wang_et_al(cifar):
    noisy = (cifar[:3] + 0.1 * torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    values = ssim(cifar[:3], noisy)
    for i in range(3):
        expected = np.mean(
            [_reference_ssim(cifar[i, c].double().numpy(), noisy[i, c].double().numpy()) for c in range(3)]
        )
        assert values[i].item() == pytest.approx(expected, abs=1e-5)


def test_ssim_ranks_distortions_and_stays_in_range(cifar):
    noise = 0.02 * torch.randn(cifar.shape, generator=torch.Generator().manual_seed(1))
    slightly_noisy = ssim(cifar, (cifar + noise).clamp(0, 1))
    inverted = ssim(cifar, 1 - cifar)
    assert (slightly_noisy > 0.9).all() and (slightly_noisy < 1).all()
    assert (inverted < slightly_noisy).all() and (inverted >= -1).all() and (inverted < 0.5).all()
    assert torch.allclose(ssim(cifar, 1 - cifar), ssim(1 - cifar, cifar), atol=1e-6)  # symmetric


# --- matching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["psnr", "mse"])
def test_match_images_recovers_the_permutation_of_a_permuted_batch(cifar, by):
    permutation = torch.randperm(20, generator=torch.Generator().manual_seed(2))
    noisy = (cifar + 0.05 * torch.randn(cifar.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    recon = noisy[permutation]  # recon[j] is a copy of true image permutation[j]
    perm = match_images(recon, cifar, by=by)
    assert perm.dtype == np.int64 and sorted(perm.tolist()) == list(range(20))
    assert torch.equal(recon[perm], noisy)  # recon[perm[i]] is the copy of truth[i]
    exact = match_images(cifar[permutation], cifar, by=by)  # exact copies: infinite PSNR, capped
    assert torch.equal(cifar[permutation][exact], cifar)


def test_match_images_rejects_an_unknown_criterion(cifar):
    with pytest.raises(ValueError, match="unknown matching criterion"):
        match_images(cifar, cifar, by="ssim")


# --- report and grid --------------------------------------------------------------------------


def test_evaluate_reconstruction_of_a_permuted_noisy_copy(cifar, lpips_metric):
    spec = SPECS["cifar10"]
    truth = cifar[:16] * 0.8 + 0.1  # in [0.1, 0.9]: the +-0.02 noise below is never clamped
    signs = torch.randint(0, 2, truth.shape, generator=torch.Generator().manual_seed(4)) * 2 - 1
    permutation = torch.randperm(16, generator=torch.Generator().manual_seed(5))
    recon = (truth + 0.02 * signs)[permutation]  # MSE exactly 0.0004 per image: PSNR 33.98 dB
    result = evaluate_reconstruction(spec.normalize(recon), spec.normalize(truth), spec.denormalize, lpips=lpips_metric)
    json.dumps(result, allow_nan=False)  # strict JSON: no inf / nan
    perm = np.array(result["permutation"])
    assert torch.equal(permutation[perm], torch.arange(16))
    expected_psnr = 10 * math.log10(1 / 0.0004)
    assert [row["psnr"] for row in result["per_image"]] == pytest.approx([expected_psnr] * 16, abs=1e-3)
    assert result["mean"]["psnr"] == pytest.approx(expected_psnr, abs=1e-3)
    assert [row["recon_index"] for row in result["per_image"]] == result["permutation"]
    assert all(0.5 < row["ssim"] < 1 and 0 < row["lpips"] < 0.1 for row in result["per_image"])
    assert result["mean"]["ssim"] == pytest.approx(np.mean([row["ssim"] for row in result["per_image"]]))
    assert result["matched_by"] == "psnr" and result["lpips_backbone"] == lpips_metric.backbone_source


def test_evaluate_reconstruction_caps_the_psnr_of_exact_matches(cifar):
    spec = SPECS["cifar10"]
    truth = spec.normalize(cifar[:4])
    result = evaluate_reconstruction(truth.flip(0), truth, spec.denormalize, lpips=None)
    json.dumps(result, allow_nan=False)
    assert result["permutation"] == [3, 2, 1, 0]
    assert result["psnr_cap_db"] == PSNR_CAP_DB and result["mean"]["psnr"] == PSNR_CAP_DB
    assert result["mean"]["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert result["mean"]["lpips"] is None and result["lpips_backbone"] is None


def test_unit_images_denormalise_and_clamp():
    spec = SPECS["mnist"]
    images = torch.tensor([-10.0, 0.0, 10.0]).view(3, 1, 1, 1)
    assert unit_images(images, spec.denormalize).flatten().tolist() == pytest.approx([0.0, 0.1307, 1.0])


def test_save_grid_writes_true_images_above_reconstructions(cifar, tmp_path):
    path = save_grid(
        cifar[:6], cifar[:6].flip(-1), tmp_path / "run" / "grid.png", captions=[[str(i) for i in range(6)], ["r"] * 6]
    )
    assert path == tmp_path / "run" / "grid.png"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.height > 150 and image.width > image.height
    with pytest.raises(ValueError, match="differ in shape"):
        save_grid(cifar[:6], cifar[:5], tmp_path / "bad.png")


def test_grid_draws_every_image_of_a_batch_of_50_in_lines_of_16(tmp_path, monkeypatch):
    import inversion.utils.plotting as visualize

    drawn = {}
    real_figure = visualize.figure

    def keep(*args, **kwargs):
        drawn["fig"], drawn["axes"] = real_figure(*args, **kwargs)
        return drawn["fig"], drawn["axes"]

    monkeypatch.setattr(visualize, "figure", keep)
    truth = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    recon = 1 - truth
    save_grid(
        truth, recon, tmp_path / "grid.png", captions=[[f"t{i}" for i in range(50)], [f"r{i}" for i in range(50)]]
    )
    axes = drawn["axes"]
    assert axes.shape == (8, 16)  # 4 blocks of 16 (the last holds 2), each a true line above a reconstructed one
    shown = [ax for ax in axes.flat if ax.images]
    assert len(shown) == 100
    for i in range(50):  # image i: block i // 16, column i % 16; truth above its reconstruction
        block, column = divmod(i, 16)
        top, bottom = axes[2 * block][column], axes[2 * block + 1][column]
        assert top.get_title() == f"t{i}" and bottom.get_title() == f"r{i}"
        np.testing.assert_allclose(top.images[0].get_array(), truth[i, 0].numpy())
        np.testing.assert_allclose(bottom.images[0].get_array(), recon[i, 0].numpy())
    assert axes[6][0].get_ylabel() == "true 49-50" and axes[7][0].get_ylabel() == "reconstructed 49-50"
