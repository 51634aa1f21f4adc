"""The baselines idlg, gi, rlg, llg, bias_corrected: each where it is known to work and where it is known to fail."""

import numpy as np
import pytest
import torch
from torch import nn

from label_restore import InconsistentGradientWarning, counts_from_labels, restore_labels
from label_restore.counting import greedy_counts
from label_restore.existence import fill_present
from label_restore.llg import bias_impact, llg_impact
from label_restore.rlg import class_subspace, separation_margin


def mlp_grads(labels, num_classes, act=None, seed=0, in_dim=32, dim=64, same_input=False, fc_scale=None):
    """Mean-CE final-layer gradients of an untrained 2-layer MLP (Linear, act, Linear) on random inputs."""
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(in_dim, dim), act if act is not None else nn.ReLU())
    fc = nn.Linear(dim, num_classes)
    if fc_scale is not None:
        with torch.no_grad():
            fc.weight.mul_(fc_scale)
            fc.bias.mul_(fc_scale)
    labels = torch.as_tensor(labels)
    x = torch.randn(len(labels), in_dim)
    if same_input:
        x = x[:1].expand(len(labels), -1)
    loss = nn.functional.cross_entropy(fc(body(x)), labels)
    gw, gb = torch.autograd.grad(loss, [fc.weight, fc.bias])
    return dict(grad_weight=gw, grad_bias=gb, weight=fc.weight.detach(), bias=fc.bias.detach(), batch_size=len(labels))


DISTINCT = [3, 7, 11, 12, 18]  # K = 5 distinct labels out of C = 20


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("method", ["idlg", "gi", "rlg"])
def test_existence_methods_exact_for_distinct_labels_with_relu(method, seed):
    g = mlp_grads(DISTINCT, 20, nn.ReLU(), seed)
    true = counts_from_labels(DISTINCT, 20)
    r = restore_labels(method, **g)
    assert np.array_equal(r.present, true > 0)
    assert np.array_equal(r.counts, true)
    assert np.array_equal(r.raw_counts, true)  # 0/1 presence


def test_gi_absent_rows_are_nonnegative_with_relu():
    # why gi works with ReLU: an absent class's row is a positive combination of non-negative embeddings
    g = mlp_grads(DISTINCT, 20, nn.ReLU(), 0)
    absent = np.setdiff1d(np.arange(20), DISTINCT)
    assert (g["grad_weight"][absent] >= 0).all()


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_gi_with_silu_adds_absent_classes(seed):
    # SiLU embeddings have negative entries, so absent classes' rows have negative entries too
    g = mlp_grads(DISTINCT, 20, nn.SiLU(), seed)
    true = counts_from_labels(DISTINCT, 20)
    with pytest.warns(InconsistentGradientWarning, match=r"gi \(K=5\).*raw counts sum to \d+, batch size 5"):
        r = restore_labels("gi", **g)
    assert r.present[true > 0].all()  # no present class missed ...
    assert r.present.sum() > 5  # ... but absent ones reported present, more than K: the result says so
    assert len(r.diagnostics) == 1 and r.diagnostics[0].startswith(f"raw counts sum to {r.present.sum()}, batch size 5")
    # rlg does not depend on the sign of the embeddings
    assert np.array_equal(restore_labels("rlg", **g).present, true > 0)


def test_idlg_with_repeated_labels_gets_existence_right_and_counts_wrong():
    labels = [0, 0, 0, 1]
    g = mlp_grads(labels, 10, nn.ReLU(), 0)
    r = restore_labels("idlg", **g)
    assert r.present.tolist() == [True, True] + [False] * 8
    assert r.counts.tolist()[:2] == [2, 2]  # padded by cycling over the present classes; truth is [3, 1]
    assert r.raw_counts.tolist()[:2] == [1, 1]


def test_rlg_fails_when_all_inputs_are_identical():
    # identical inputs make grad W rank one: the class subspace is a line and holds one label only
    labels = [0, 0, 0, 0, 1, 2]
    g = mlp_grads(labels, 10, nn.ReLU(), 0, same_input=True)
    r = restore_labels("rlg", **g)
    assert r.details["rank"] == 1
    assert not np.array_equal(r.present, counts_from_labels(labels, 10) > 0)


def test_rlg_false_positives_when_k_is_close_to_c():
    # K = 8 samples span an 8-dim subspace of the 9-dim {sum = 0} space of C = 10: too much room
    labels = [0, 0, 0, 1, 2, 2, 5, 5]
    g = mlp_grads(labels, 10, nn.ReLU(), 0)
    r = restore_labels("rlg", **g)
    true = counts_from_labels(labels, 10)
    assert r.present[true > 0].all() and r.present.sum() > 4
    assert (r.details["margins"][true > 0] > 0).all()


# ---------------------------------------------------------------- llg and bias_corrected (greedy counting)


def test_llg_and_bias_corrected_count_repeated_labels_with_uniform_outputs_and_one_input():
    # one shared input and a zero final layer: every row sum is (1/C - n_i/K) |e|_1 and grad b = 1/C - n_i/K
    labels = [0, 0, 0, 0, 1, 2]
    g = mlp_grads(labels, 10, nn.ReLU(), 0, same_input=True, fc_scale=0.0)
    true = counts_from_labels(labels, 10)
    for method in ("llg", "bias_corrected"):
        r = restore_labels(method, **g)
        assert np.array_equal(r.counts, true), method
        assert np.array_equal(r.raw_counts, true), method
    # bias_corrected's impact estimate is exact here: one instance moves grad b_i by -1/K
    assert restore_labels("bias_corrected", **g).details["impact"] == pytest.approx(-1 / 6, rel=1e-6)


def test_sign_based_methods_miss_a_class_holding_less_than_one_over_c_of_the_batch():
    # C = 4, labels [0,0,0,0,1], one shared input, zero final layer: grad b_1 = 1/C - 1/K = 0.05 > 0 and the
    # row sum of class 1 is positive too, so every sign-based method misses class 1; iLRG counts it.
    labels = [0, 0, 0, 0, 1]
    g = mlp_grads(labels, 4, nn.ReLU(), 0, same_input=True, fc_scale=0.0)
    assert g["grad_bias"][1] == pytest.approx(0.05, abs=1e-6)
    for method in ("llg", "bias_corrected", "idlg"):
        r = restore_labels(method, **g)
        assert r.present.tolist() == [True, False, False, False], method
        assert r.counts.tolist() == [5, 0, 0, 0], method
    assert restore_labels("ilrg", **g).counts.tolist() == [4, 1, 0, 0]


def test_llg_with_silu_gets_the_label_set_wrong():
    g = mlp_grads(DISTINCT, 20, nn.SiLU(), 0)
    r = restore_labels("llg", **g)
    assert not np.array_equal(r.present, counts_from_labels(DISTINCT, 20) > 0)
    assert r.counts.sum() == 5


def test_llg_impact_formula():
    s = np.array([-3.0, -1.0, 0.5, 2.0])
    assert llg_impact(s, 4) == pytest.approx(-4.0 / 4 * (1 + 1 / 4))
    assert llg_impact(np.array([1.0, 0.0]), 3) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bias_corrected_exact_on_untrained_mlp_with_repeated_labels(seed):
    labels = [0, 0, 0, 1]
    g = mlp_grads(labels, 10, nn.ReLU(), seed)
    assert restore_labels("bias_corrected", **g).counts.tolist()[:2] == [3, 1]


def test_bias_corrected_fails_on_a_confident_model():
    # a final layer scaled x30 gives peaked, non-uniform probabilities: the uniform-spread model behind the
    # impact estimate breaks
    labels = [0, 0, 0, 1, 1, 4, 4, 4]
    g = mlp_grads(labels, 10, nn.ReLU(), 0, fc_scale=30.0)
    r = restore_labels("bias_corrected", **g)
    assert not np.array_equal(r.counts, counts_from_labels(labels, 10))


def test_bias_impact_formula():
    # uniform outputs: grad b = 1/C - n/K; negatives sum to P/C - 1; m = C/(K (C - P)) * (P/C - 1) = -1/K
    c, k = 10, 6
    n = np.array([4, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    assert bias_impact(1 / c - n / k, k) == pytest.approx(-1 / k)
    assert bias_impact(np.zeros(5), 3) == 0.0


def test_bias_corrected_impact_is_not_breachings():
    # Dyadic hand case (exact in floating point): C = 4, K = 8, uniform outputs, counts (5, 3, 0, 0):
    # grad b = 1/4 - n/8 = (-0.375, -0.125, 0.25, 0.25); the negatives sum to -0.5, P = 2.
    n = np.array([5, 3, 0, 0])
    g = 1 / 4 - n / 8
    # ours: m = C / (K (C - P)) * (-0.5) = -1/8, one instance's true effect on its class; the counts come out right
    r = restore_labels("bias_corrected", grad_bias=g, batch_size=8)
    assert r.details["impact"] == -0.125 and r.counts.tolist() == [5, 3, 0, 0] and r.diagnostics == ()
    # breaching's "bias-corrected": m_B = -0.5 / K = -1/16, too small by (C - P)/C = 1/2. Stage 1 leaves
    # (-0.3125, -0.0625, ...); class 0 then takes four steps to climb to -0.0625, wins the tie and ends at 6
    _, breaching = greedy_counts(g, 8, -0.5 / 8)
    assert breaching.tolist() == [6, 2, 0, 0]


def test_fill_present_rules():
    scores = np.array([-1.0, -3.0, 2.0, -2.0, 1.0])
    present = scores < 0
    assert fill_present(present, scores, 3).tolist() == [1, 1, 0, 1, 0]  # P = K
    assert fill_present(present, scores, 2).tolist() == [0, 1, 0, 1, 0]  # trim: the 2 most negative
    assert fill_present(present, scores, 7).tolist() == [2, 3, 0, 2, 0]  # pad: cycle over the present
    assert fill_present(np.zeros(5, bool), scores, 2).tolist() == [0, 1, 0, 1, 0]  # none present: all ranked


def test_gi_ranking_rule_cycles_when_k_exceeds_c():
    g = mlp_grads([0, 1, 2, 3], 4, nn.ReLU(), 0)
    g["batch_size"] = 10  # K > C: the ranking is cycled
    r = restore_labels("gi", **g)
    assert r.counts.sum() == 10 and sorted(r.counts.tolist()) == [2, 2, 3, 3]


def test_rlg_subspace_rank_ignores_float32_noise_and_is_capped_at_k():
    # grad W of K = 3 samples has rank 3; float32 rounding must not add rank, and r = min(rank, K)
    torch.manual_seed(0)
    resid = torch.softmax(torch.randn(3, 12), 1) - torch.eye(12)[[0, 4, 4]]
    gw = (resid.T @ torch.relu(torch.randn(3, 50))) / 3
    assert gw.dtype == torch.float32
    v, rank = class_subspace(gw, 10)
    assert v.shape == (12, 3) and rank == 3
    v, rank = class_subspace(gw, 2)
    assert v.shape == (12, 2) and rank == 3  # r is capped at K; the rank is not
    v, rank = class_subspace(torch.zeros(4, 5), 3)
    assert v.shape == (4, 0) and rank == 0


def test_separation_margin_by_hand():
    # rows c_i of the class subspace: class 0 = (1, 0), class 1 = (0, 1), class 2 = (1, 1)
    v = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # class 0: a = (-1, 2) gives c_0.a = -1, c_1.a = 2, c_2.a = 1: strictly separable, margin capped at 1
    assert separation_margin(v, 0) == pytest.approx(1.0)
    assert separation_margin(v, 1) == pytest.approx(1.0)
    # class 2: a_1 + a_2 <= -1 forces min(a_1, a_2) <= -1/2: best margin -1/2, not separable (absent)
    assert separation_margin(v, 2) == pytest.approx(-0.5)
    assert separation_margin(np.zeros((3, 2)), 0) == -np.inf  # c_i = 0: infeasible


def test_idlg_and_gi_rules_by_hand():
    gw = torch.tensor([[-1.0, 2.0], [1.0, -3.0], [0.2, 0.3]])
    # row sums (1, -2, 0.5): idlg sees class 1 only and pads by cycling over it
    r = restore_labels("idlg", grad_weight=gw, batch_size=2)
    assert r.present.tolist() == [False, True, False] and r.counts.tolist() == [0, 2, 0]
    np.testing.assert_allclose(r.details["scores"], [1.0, -2.0, 0.5])
    # row minima (-1, -3, 0.2): gi sees classes 0 and 1 and takes the K = 2 most negative
    r = restore_labels("gi", grad_weight=gw, batch_size=2)
    assert r.present.tolist() == [True, True, False] and r.counts.tolist() == [1, 1, 0]
    np.testing.assert_allclose(r.details["scores"], [-1.0, -3.0, 0.2])
