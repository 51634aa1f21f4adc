"""label_restore's input checks: consistency findings (warning + RestorationResult.diagnostics) and refusals."""

import warnings

import numpy as np
import pytest
import torch
from test_label_restore import linear_layer, mean_ce_grads, options_for
from test_label_restore_baselines import mlp_grads
from torch import nn

from label_restore import METHOD_NAMES, InconsistentGradientWarning, counts_from_labels, get_method, restore_labels

RELU_METHODS = METHOD_NAMES  # every method's assumptions hold for ReLU embeddings
ANY_ACTIVATION = ("ilrg", "rlg", "bias_corrected")


def random_labels(k, num_classes, seed):
    return torch.randint(0, num_classes, (k,), generator=torch.Generator().manual_seed(seed)).tolist()


def restore_silently(method, g, **changes):
    """restore_labels, failing the test on any InconsistentGradientWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentGradientWarning)
        return restore_labels(method, **{**g, **options_for(method, g), **changes})


# ---------------------------------------------------------------- consistent inputs: silent


@pytest.mark.parametrize("k", [1, 2, 8, 24, 64])
@pytest.mark.parametrize(
    "num_classes, act, methods",
    [
        (10, nn.ReLU, RELU_METHODS),
        (20, nn.ReLU, RELU_METHODS),
        (20, nn.SiLU, ANY_ACTIVATION),
        (100, nn.ReLU, ("ilrg",)),
    ],
)
def test_exact_gradients_of_untrained_models_raise_no_finding(k, num_classes, act, methods):
    for seed in range(3):
        g = mlp_grads(random_labels(k, num_classes, seed), num_classes, act(), seed)
        for method in methods:
            r = restore_silently(method, g)
            assert r.diagnostics == (), (method, seed)
            if method == "ilrg":
                assert r.details["residual"] < 1e-5  # measured: <= 1.5e-6 up to K = 256


def test_realistic_mlp_of_the_api_tests_is_consistent():
    torch.manual_seed(1)
    body = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
    fc = nn.Linear(64, 10)
    labels = torch.randint(0, 10, (8,))
    g = mean_ce_grads(fc, body(torch.randn(8, 32)).detach(), labels)
    for method in METHOD_NAMES:
        assert restore_silently(method, g).diagnostics == (), method


# ---------------------------------------------------------------- inconsistent inputs: warned and recorded

LABELS = [0, 0, 3, 3, 3, 5, 7, 9]  # K = 8, C = 10


def test_gradients_times_1e6_are_flagged():
    g = mlp_grads(LABELS, 10, nn.ReLU(), 0)
    l1 = float(g["grad_bias"].abs().sum()) * 1e6
    big = {**g, "grad_weight": g["grad_weight"] * 1e6, "grad_bias": g["grad_bias"] * 1e6}
    with pytest.warns(InconsistentGradientWarning, match=r"ilrg \(K=8\): .*sum \|grad_bias\| = "):
        r = restore_labels("ilrg", **big)
    assert r.diagnostics[0].startswith(f"sum |grad_bias| = {l1:.3g}, above 2")
    mass = np.maximum(r.details["float_counts"], 0).sum()
    assert mass > 1e5 * 8  # the solution carries ~1e6 K in positive and negative counts
    assert r.diagnostics[1] == f"the non-negative float counts sum to {mass:.3g}, batch size 8"
    with pytest.warns(InconsistentGradientWarning, match="bias_corrected"):
        r = restore_labels("bias_corrected", **big)
    assert len(r.diagnostics) == 1 and r.diagnostics[0].startswith(f"sum |grad_bias| = {l1:.3g}")
    # the scale-invariant weight-only methods are not misled by it: their counts do not change
    for method in ("idlg", "gi", "llg"):
        assert np.array_equal(restore_silently(method, big).counts, restore_silently(method, g).counts)


def test_batch_size_smaller_than_the_batch_is_flagged_by_every_method():
    labels = [1, 3, 4, 7, 9, 12, 15, 18]  # 8 distinct labels, C = 20, restored with K = 4
    g = {**mlp_grads(labels, 20, nn.ReLU(), 0), "batch_size": 4}
    expected = {
        "ilrg": "8 classes have a negative bias gradient but batch_size is 4",
        "bias_corrected": "8 classes have a negative bias gradient but batch_size is 4",
        "idlg": "raw counts sum to 8, batch size 4",
        "gi": "raw counts sum to 8, batch size 4",
        "llg": "raw counts sum to 8, batch size 4",
        "rlg": "grad_weight has rank 8, above batch size 4",
    }
    for method, finding in expected.items():
        with pytest.warns(InconsistentGradientWarning, match=finding):
            r = restore_labels(method, **g)
        assert r.diagnostics[0].startswith(finding), method


def test_batch_size_a_multiple_of_the_batch_is_undetectable():
    # The mean gradient of 4 samples equals that of the 8 samples made of each one twice: the inputs are a
    # consistent batch of 8, and iLRG restores twice the counts. No check can (or should) flag it.
    torch.manual_seed(0)
    body, fc = nn.Sequential(nn.Linear(32, 64), nn.ReLU()), nn.Linear(64, 10)
    labels, x = torch.tensor([2, 2, 5, 9]), torch.randn(4, 32)
    g4 = mean_ce_grads(fc, body(x).detach(), labels)
    g8 = mean_ce_grads(fc, body(x.repeat(2, 1)).detach(), labels.repeat(2))
    torch.testing.assert_close(g4["grad_weight"], g8["grad_weight"])
    torch.testing.assert_close(g4["grad_bias"], g8["grad_bias"])
    r = restore_silently("ilrg", g4, batch_size=8)
    assert r.counts.tolist() == (2 * counts_from_labels(labels, 10)).tolist()


def test_a_bias_gradient_that_does_not_sum_to_zero_leaves_a_residual():
    # shift every entry of grad b by 0.05: sum = 0.5. The reduced system is square and solved exactly, so the
    # residual is what no counts can meet: K |sum grad b| / sqrt(C) = 8 * 0.5 / sqrt(10) = 1.265 samples
    g = mlp_grads(LABELS, 10, nn.ReLU(), 0)
    shifted = {**g, "grad_bias": g["grad_bias"].double() + 0.05}
    want = 8 * float(shifted["grad_bias"].sum()) / np.sqrt(10)
    with pytest.warns(InconsistentGradientWarning, match="count-system residual 1.26 samples"):
        r = restore_labels("ilrg", **shifted)
    assert r.details["solver"] == "lu" and r.details["residual"] == pytest.approx(want, rel=1e-9)
    # the explicit (C+1) x C system gives the same residual
    with pytest.warns(InconsistentGradientWarning, match="count-system residual 1.26 samples"):
        pinv = restore_labels("ilrg", **shifted, solver="pinv")
    assert pinv.details["residual"] == pytest.approx(want, rel=1e-6)


def test_warning_names_the_callers_line():
    g = mlp_grads(LABELS, 10, nn.ReLU(), 0)
    big = {**g, "grad_bias": g["grad_bias"] * 1e6}
    with pytest.warns(InconsistentGradientWarning) as through_api:
        restore_labels("bias_corrected", **big)
    with pytest.warns(InconsistentGradientWarning) as direct:
        get_method("bias_corrected")(grad_bias=big["grad_bias"], batch_size=8)
    assert through_api[0].filename == direct[0].filename == __file__


# ---------------------------------------------------------------- refused inputs


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_all_zero_gradients_are_refused(method):
    g = mlp_grads(LABELS, 10, nn.ReLU(), 0)
    zero = {**g, "grad_weight": torch.zeros_like(g["grad_weight"]), "grad_bias": torch.zeros_like(g["grad_bias"])}
    name = "grad_bias" if method in ("ilrg", "aux", "bias_corrected") else "grad_weight"
    with pytest.raises(ValueError, match=f"^{name} is all zero: .*nothing to restore"):
        restore_labels(method, **zero, **options_for(method, zero))


def test_ilrg_is_exact_with_all_zero_embeddings():
    # dead embeddings (e = 0): grad W = 0 but grad b = p - n/K is not, and every sample's probabilities are
    # softmax(b) = the class-wise ones, so iLRG is exact; an all-zero grad W alone is therefore not refused
    fc = linear_layer(np.random.default_rng(0).normal(size=(5, 3)), [0.3, -0.2, 0.1, 0.0, 0.5])
    labels = torch.tensor([0, 2, 2, 4])
    g = mean_ce_grads(fc, torch.zeros(4, 3, dtype=torch.float64), labels)
    assert not g["grad_weight"].any()
    r = restore_silently("ilrg", g)
    assert r.counts.tolist() == [1, 0, 2, 0, 1]
    np.testing.assert_allclose(r.details["float_counts"], [1, 0, 2, 0, 1], atol=1e-7)  # float32 logits


@pytest.mark.parametrize("name", ["grad_weight", "grad_bias", "weight", "bias"])
def test_meta_tensors_are_refused(name):
    g = mlp_grads(LABELS, 10, nn.ReLU(), 0)
    meta = torch.empty(g[name].shape, device="meta")
    with pytest.raises(ValueError, match=f"^{name} is a meta tensor .* on cpu or cuda"):
        restore_labels("ilrg", **{**g, name: meta})


def test_the_briefs_meta_example_is_one_line():
    with pytest.raises(ValueError) as err:
        restore_labels("idlg", grad_weight=torch.empty(10, 84, device="meta"), batch_size=8)
    assert "\n" not in str(err.value) and "meta tensor" in str(err.value)
