"""The noise estimate of label_restore.consistency: final-layer gradients of the softmax cross-entropy sum to 0 over
the classes, so their class sums measure any noise added to them, whatever the signal."""

import math
from statistics import NormalDist

import numpy as np
import pytest
from test_label_restore_baselines import mlp_grads

from label_restore.consistency import (
    NoiseEstimate,
    class_sums,
    estimate_gradient_noise,
    max_count_noise,
    noise_findings,
)

C, M = 10, 400


def exact_gradient(k, seed, num_classes=C, dim=M):
    """A float64 mean cross-entropy gradient of K samples built by hand: (grad_weight (C, M), grad_bias (C,))."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(k, num_classes))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    delta = probs - np.eye(num_classes)[rng.integers(0, num_classes, k)]
    embeddings = rng.normal(size=(k, dim))
    return delta.T @ embeddings / k, delta.mean(axis=0)


def chi_square_tolerance(sums, deviations=5.0):
    """Bound on |sigma_hat^2 / sigma^2 - 1|: sigma_hat^2 is a chi-square with ``sums`` degrees of freedom over
    ``sums``, whose relative std is sqrt(2 / sums)."""
    return deviations * math.sqrt(2.0 / sums)


def test_class_sums_of_an_exact_gradient_are_zero():
    grad_weight, grad_bias = exact_gradient(8, 0)
    sums = class_sums(grad_weight, grad_bias)
    assert sums.shape == (M + 1,)
    scale = np.abs(grad_weight).sum(axis=0).max()
    assert np.abs(sums).max() <= 64 * np.finfo(np.float64).eps * scale  # float64 rounding only


@pytest.mark.parametrize("sigma", [1e-5, 1e-2, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_estimate_of_known_noise_is_within_the_chi_square_spread(sigma, seed):
    grad_weight, grad_bias = exact_gradient(16, seed)
    rng = np.random.default_rng(100 + seed)
    noisy_weight = grad_weight + rng.normal(scale=sigma, size=grad_weight.shape)
    noisy_bias = grad_bias + rng.normal(scale=sigma, size=grad_bias.shape)
    estimate = estimate_gradient_noise(noisy_weight, noisy_bias, 16)
    assert estimate.sums == M + 1
    assert abs(estimate.std**2 / sigma**2 - 1) <= chi_square_tolerance(M + 1)
    assert estimate.count_noise == pytest.approx(16 * estimate.std, rel=1e-12)


@pytest.mark.parametrize("num_classes", [2, 10])
def test_estimate_is_unbiased(num_classes):
    ratios = []
    for seed in range(40):
        grad_weight, grad_bias = exact_gradient(8, seed, num_classes)
        rng = np.random.default_rng(1000 + seed)
        noisy_weight = grad_weight + rng.normal(scale=0.1, size=grad_weight.shape)
        noisy_bias = grad_bias + rng.normal(scale=0.1, size=num_classes)
        ratios.append(estimate_gradient_noise(noisy_weight, noisy_bias, 8).std ** 2 / 0.01)
    # the mean of 40 chi-squares over 401 degrees of freedom each: relative std sqrt(2 / (40 * 401)) = 1.1%
    assert abs(np.mean(ratios) - 1) <= 4 * math.sqrt(2 / (40 * (M + 1)))


def test_signal_rms_leaves_the_noise_out():
    grad_weight, grad_bias = exact_gradient(16, 11)
    true_rms = math.sqrt(np.mean(np.concatenate([grad_weight.ravel(), grad_bias]) ** 2))
    rng = np.random.default_rng(12)
    noisy = (
        grad_weight + rng.normal(scale=true_rms, size=grad_weight.shape),
        grad_bias + rng.normal(scale=true_rms, size=C),
    )
    estimate = estimate_gradient_noise(*noisy, 16)
    # noise as large as the signal: the signal's share sigma^2 is known to sqrt(2 / 401) = 7%, so its RMS to 3.5%
    assert estimate.signal_rms == pytest.approx(true_rms, rel=5 * 0.035)
    assert estimate.snr == pytest.approx(estimate.signal_rms / estimate.std)


def test_estimate_does_not_depend_on_the_signal():
    grad_weight, grad_bias = exact_gradient(16, 3)
    rng = np.random.default_rng(7)
    noise_weight, noise_bias = rng.normal(scale=1e-3, size=grad_weight.shape), rng.normal(scale=1e-3, size=C)
    small = estimate_gradient_noise(grad_weight + noise_weight, grad_bias + noise_bias, 16)
    large = estimate_gradient_noise(1e3 * grad_weight + noise_weight, 1e3 * grad_bias + noise_bias, 16)
    # float64 sums of entries ~1e2: rounding ~1e-13, far below the noise's 1e-3
    assert large.std == pytest.approx(small.std, rel=1e-8)
    assert large.snr == pytest.approx(1e3 * small.snr, rel=1e-3)


def test_expected_sums_are_subtracted_before_estimating():
    grad_weight, grad_bias = exact_gradient(8, 4)
    offsets = np.random.default_rng(5).normal(size=M + 1)
    shifted_weight = grad_weight + offsets[:M] / C  # each column's sum grows by its offset
    shifted_bias = grad_bias + offsets[M] / C
    assert estimate_gradient_noise(shifted_weight, shifted_bias, 8).noise_dominated
    corrected = estimate_gradient_noise(shifted_weight, shifted_bias, 8, expected_sums=offsets)
    assert corrected.std <= corrected.rounding_floor and not corrected.noise_dominated


@pytest.mark.parametrize("num_classes", [1, 2, 10, 100, 1000])
def test_threshold_expects_half_a_class_miscounted(num_classes):
    threshold = max_count_noise(num_classes)
    # C classes, each off by 0.5 or more with probability 2 (1 - Phi(0.5 / threshold))
    miscounted = num_classes * 2 * (1 - NormalDist().cdf(0.5 / threshold))
    assert miscounted == pytest.approx(0.5, rel=1e-9)


@pytest.mark.parametrize("count_noise, flagged", [(0.2, False), (0.3, True)])
def test_flag_follows_the_counts_noise(count_noise, flagged):
    grad_weight, grad_bias = exact_gradient(10, 6)
    rng = np.random.default_rng(8)
    sigma = 1e-2
    noisy = (grad_weight + rng.normal(scale=sigma, size=grad_weight.shape), grad_bias + rng.normal(scale=sigma, size=C))
    k = 1 + round(count_noise / estimate_gradient_noise(*noisy, 1).std)  # K sigma_hat just above count_noise
    estimate = estimate_gradient_noise(*noisy, k)
    assert abs(estimate.count_noise - count_noise) < 2 * estimate.std
    assert estimate.max_count_noise == pytest.approx(0.2551, abs=1e-4)  # C = 10
    assert estimate.noise_dominated is flagged
    assert bool(noise_findings(estimate)) is flagged


@pytest.mark.parametrize("k", [1, 8, 64])
def test_clean_float32_gradients_stay_below_the_rounding_floor(k):
    for seed in range(4):
        labels = np.random.default_rng(seed).integers(0, 20, k).tolist()
        g = mlp_grads(labels, 20, seed=seed)
        estimate = estimate_gradient_noise(g["grad_weight"], g["grad_bias"], k)
        assert 0 < estimate.std <= estimate.rounding_floor, seed
        assert not estimate.noise_dominated and noise_findings(estimate) == ()


def test_weight_only_gradients_use_the_columns():
    grad_weight, _ = exact_gradient(8, 9)
    noisy = grad_weight + np.random.default_rng(10).normal(scale=0.1, size=grad_weight.shape)
    estimate = estimate_gradient_noise(noisy, None, 8)
    assert estimate.sums == M and abs(estimate.std**2 / 0.01 - 1) <= chi_square_tolerance(M)


def test_finding_states_the_numbers():
    estimate = NoiseEstimate(
        std=3.1e-3,
        sums=513,
        rounding_floor=4e-9,
        signal_rms=2e-3,
        snr=0.65,
        count_noise=0.81,
        max_count_noise=0.255,
        noise_dominated=True,
    )
    (finding,) = noise_findings(estimate)
    assert finding == (
        "the gradient's noise std is estimated at 3.10e-03 per entry (from the 513 class sums that are 0 without "
        "noise; the signal's RMS per entry is 2.00e-03, SNR 0.65): the counts' noise is at least 0.81 samples per "
        "class, above 0.26 (then the noise alone miscounts half a class, in expectation); these counts are "
        "unreliable"
    )


def test_rounding_level_noise_is_never_flagged_even_for_a_huge_batch():
    g = mlp_grads([0, 3, 3, 7], 20)
    claimed = 10**12  # K sigma_hat far above the threshold, but sigma_hat is float32 rounding
    estimate = estimate_gradient_noise(g["grad_weight"], g["grad_bias"], claimed)
    assert estimate.count_noise > estimate.max_count_noise and not estimate.noise_dominated
