"""Noise-aware label restoration on shared updates (inversion.restore.from_update): the noise level of the final
layer's (pseudo-)gradients is estimated from their class sums, a FedAvg client's weight decay subtracted, and every
label method's result states it and flags noise-dominated counts."""

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from inversion.fl.client import client_update
from inversion.fl.dp import DPSGD
from inversion.fl.local import LocalTraining
from inversion.models import build_model, final_layer
from inversion.restore import needs_auxiliary, restore_from_update
from inversion.restore.auxiliary import AuxiliaryData
from inversion.restore.from_update import expected_class_sums, update_noise
from label_restore import available_methods, method_spec, register_method, unregister_method
from label_restore.consistency import (
    InconsistentGradientWarning,
    NoisyGradientWarning,
    class_sums,
    estimate_gradient_noise,
)
from label_restore.result import make_result

K, CLASSES, WIDTH = 8, 10, 256  # FCN on 28x28 inputs: the final layer is (10, 256), 257 class sums
FINAL_LAYER_METHODS = [m for m in available_methods() if method_spec(m).needs == "final_layer"]


def fcn(seed=0):
    return build_model("fcn", num_classes=CLASSES, in_channels=1, image_size=(28, 28), width=WIDTH, seed=seed)


def batch(seed=0, k=K):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, 1, 28, 28, generator=gen), torch.randint(0, CLASSES, (k,), generator=gen)


def within_chi_square(estimate, sigma):
    """sigma_hat^2 / sigma^2 is a chi-square over its ``sums`` degrees of freedom: 5 of its relative stds."""
    return abs(estimate.std**2 / sigma**2 - 1) <= 5 * math.sqrt(2 / estimate.sums)


def restore_quietly(method, update, model, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InconsistentGradientWarning)
        return restore_from_update(method, update, model, **options)


def test_dp_sgd_update_is_flagged_with_the_known_noise():
    model, (images, labels) = fcn(), batch()
    dp = DPSGD(noise_multiplier=0.5, max_grad_norm=1.0)
    update = client_update(model, images, labels, dp=dp, dp_seed=3)
    with pytest.warns(NoisyGradientWarning, match=r"^ilrg \(K=8\): the gradient's noise std is estimated at "):
        result = restore_from_update("ilrg", update, model)
    noise = result.details["noise"]
    sigma = 0.5 * 1.0 / K  # Opacus: N(0, (sigma_dp C)^2) on the sum of the clipped gradients, divided by K
    assert noise["sums"] == WIDTH + 1
    assert abs(noise["std"] ** 2 / sigma**2 - 1) <= 5 * math.sqrt(2 / noise["sums"])
    assert noise["count_noise"] == pytest.approx(K * noise["std"]) and noise["noise_dominated"]
    assert result.diagnostics[-1] == (
        f"the gradient's noise std is estimated at {noise['std']:.2e} per entry (from the 257 class sums that are 0 "
        f"without noise; the signal's RMS per entry is {noise['signal_rms']:.2e}, SNR {noise['snr']:.2g}): the "
        f"counts' noise is at least {noise['count_noise']:.2g} samples per class, above 0.26 (then the noise alone "
        "miscounts half a class, in expectation); these counts are unreliable"
    )


@pytest.mark.parametrize("dp", [None, DPSGD(noise_multiplier=0.0, max_grad_norm=1.0)])
def test_clean_update_is_not_flagged(dp):
    model, (images, labels) = fcn(1), batch(1)
    update = client_update(model, images, labels, dp=dp, dp_seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoisyGradientWarning)
        result = restore_from_update("ilrg", update, model)
    noise = result.details["noise"]
    assert noise["std"] <= noise["rounding_floor"] and not noise["noise_dominated"]
    if dp is None:
        assert result.diagnostics == ()
    else:  # no noise, but clipping: said, as it biases the counts (iLRG's LnAcc fell to 0.38-0.71 at sigma 0)
        (finding,) = result.diagnostics
        assert finding.startswith("the client clipped each sample's gradient to norm 1 (DP-SGD")


def test_clean_fedavg_update_with_a_small_learning_rate_is_not_flagged():
    model, (images, labels) = fcn(6), batch(6, k=16)
    update = client_update(model, images, labels, local=LocalTraining(4, 4, 1e-3))
    estimate = update_noise(update, model, 16)
    # the delta rounds on the weights (~0.05), not on the gradient: divided by eta S, more than the gradient's
    # own rounding floor
    assert estimate.std > estimate_gradient_noise(*update.final_layer_gradients(model), 16).rounding_floor
    assert estimate.std <= estimate.rounding_floor and not estimate.noise_dominated


def test_every_label_method_reports_the_noise():
    model, (images, labels) = fcn(2), batch(2)
    update = client_update(model, images, labels, dp=DPSGD(noise_multiplier=0.5), dp_seed=4, dataset="mnist")
    expected = update_noise(update, model, K)
    gen = torch.Generator().manual_seed(5)
    aux = AuxiliaryData(torch.randn(60, 1, 28, 28, generator=gen), torch.arange(CLASSES).repeat(6))
    for method in available_methods():
        options = {"aux": aux} if needs_auxiliary(method) else {}
        with pytest.warns(NoisyGradientWarning, match=rf"^{method} \(K=8\): the gradient's noise std"):
            result = restore_from_update(method, update, model, **options)
        assert result.details["noise"]["std"] == expected.std, method
        assert result.diagnostics[-1].startswith("the gradient's noise std is estimated at "), method
    assert {"ilrg", "aux", "idlg", "rlg", "llg"} <= set(available_methods())


def offset_model(seed=0, offset=1.0):
    """An FCN whose final layer's weights are shifted by ``offset``: weight decay then moves their class sums a lot
    (each column sums to ~10 offset)."""
    model = fcn(seed)
    with torch.no_grad():
        final_layer(model).weight.add_(offset)
    return model


def test_expected_class_sums_are_those_of_a_clean_client_with_weight_decay():
    model, (images, labels) = offset_model(), batch(3, k=16)
    local = LocalTraining(8, 4, 0.05, momentum=0.9, weight_decay=0.05)
    update = client_update(model, images, labels, local=local)
    expected = expected_class_sums(update, model)
    actual = class_sums(*update.final_layer_gradients(model))
    assert expected.shape == (WIDTH + 1,)
    # float32 client: its sums carry the rounding of the steps on the weights (column sums ~10, eps 1.2e-7)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    assert expected_class_sums(client_update(model, images, labels), model) is None  # FedSGD
    plain = client_update(model, images, labels, local=LocalTraining(4, 4, 0.05))
    assert expected_class_sums(plain, model) is None  # no weight decay: sums are 0


def test_fedavg_weight_decay_is_not_mistaken_for_noise():
    model, (images, labels) = offset_model(), batch(3, k=16)
    local = LocalTraining(8, 4, 0.05, momentum=0.9, weight_decay=0.05)
    update = client_update(model, images, labels, local=local)
    uncorrected = estimate_gradient_noise(*update.final_layer_gradients(model), 16)
    assert uncorrected.noise_dominated  # the decay's class sums alone look like noise
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoisyGradientWarning)
        result = restore_from_update("ilrg", update, model)
    noise = result.details["noise"]
    assert noise["std"] <= noise["rounding_floor"] and not noise["noise_dominated"]
    assert noise["std"] < 1e-3 * uncorrected.std


def test_noisy_fedavg_update_with_weight_decay_is_flagged():
    model, (images, labels) = offset_model(4), batch(4, k=16)
    local = LocalTraining(4, 4, 0.05, weight_decay=0.05)
    update = client_update(model, images, labels, local=local, dp=DPSGD(noise_multiplier=0.5), dp_seed=6)
    with pytest.warns(NoisyGradientWarning):
        result = restore_from_update("ilrg", update, model)
    estimate = update_noise(update, model, 16)
    assert result.details["noise"]["std"] == estimate.std and estimate.noise_dominated
    # each step's gradient gets N(0, (0.5 / B)^2) per entry; the pseudo-gradient is the mean of S = 4 of them
    assert within_chi_square(estimate, 0.5 / 4 / math.sqrt(4))


def test_update_method_without_the_final_layer_gets_no_estimate():
    model, (images, labels) = fcn(5), batch(5)
    full = client_update(model, images, labels, dp=DPSGD(noise_multiplier=0.5), dp_seed=7)
    first = next(iter(full.gradients))
    partial = dataclasses.replace(full, gradients={first: full.gradients[first]})

    def everyone_in_class_0(update, model, *, batch_size):
        counts = np.eye(CLASSES, dtype=np.int64)[0] * batch_size
        return make_result("class_0_update", counts, counts, counts > 0, batch_size)

    register_method("class_0_update", everyone_in_class_0, needs="update")
    try:
        assert "noise" not in restore_from_update("class_0_update", partial, model).details
        with pytest.warns(NoisyGradientWarning):
            assert restore_from_update("class_0_update", full, model).details["noise"]["noise_dominated"]
    finally:
        unregister_method("class_0_update")
