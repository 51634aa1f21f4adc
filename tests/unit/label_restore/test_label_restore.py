"""label_restore: the public API, input errors, and iLRG against hand-computed and autograd cases."""

import math
import sys
from decimal import Decimal

import numpy as np
import pytest
import torch
from torch import nn

from label_restore import (
    METHOD_NAMES,
    InconsistentGradientWarning,
    RestorationResult,
    counts_from_labels,
    get_method,
    label_metrics,
    restore_labels,
)
from label_restore.ilrg import class_embeddings, class_probabilities


def mean_ce_grads(fc: nn.Linear, emb: torch.Tensor, labels: torch.Tensor) -> dict:
    """Autograd gradients of the mean cross-entropy w.r.t. the final layer, as restore_labels takes them."""
    loss = nn.functional.cross_entropy(fc(emb), labels)
    gw, gb = torch.autograd.grad(loss, [fc.weight, fc.bias])
    return dict(grad_weight=gw, grad_bias=gb, weight=fc.weight.detach(), bias=fc.bias.detach(), batch_size=len(labels))


def options_for(method: str, g: dict) -> dict:
    """The extra inputs a method needs beyond the gradients: for ``aux``, auxiliary data of a model that ignores
    its input (one sample per class, softmax(b)); none for the others."""
    if method != "aux":
        return {}
    c = g["bias"].shape[0]
    return {"aux_probs": torch.softmax(g["bias"], 0).expand(c, c), "aux_labels": torch.arange(c)}


def linear_layer(weight, bias) -> nn.Linear:
    w = torch.as_tensor(weight, dtype=torch.float64)
    fc = nn.Linear(w.shape[1], w.shape[0]).double()
    with torch.no_grad():
        fc.weight.copy_(w)
        fc.bias.copy_(torch.as_tensor(bias, dtype=torch.float64))
    return fc


# ---------------------------------------------------------------- iLRG, exact hand-computed cases

W3 = [[1.0, 0.0], [0.0, 1.0], [1.0, -1.0]]
B3 = [0.0, 0.5, -0.5]
X3 = [1.0, 2.0]


def test_ilrg_hand_computed_three_classes_with_absent_class():
    # The final layer is the whole model (e = x) and all K=5 samples share x = (1, 2), labels [0,0,2,2,2].
    # Then grad W_i = grad b_i * x for every class, so e_i = x exactly, p_i = softmax(Wx + b) = p for all i,
    # and row i of the system reads K p_i - n_i = K grad b_i = K p_i - n_i: exact, n = (2, 0, 3).
    fc = linear_layer(W3, B3)
    labels = torch.tensor([0, 0, 2, 2, 2])
    x = torch.tensor([X3] * 5, dtype=torch.float64)
    g = mean_ce_grads(fc, x, labels)

    # by hand: z = Wx + b = (1, 2.5, -1.5), e^z = (2.718282, 12.182494, 0.223130), sum 15.123906;
    # grad b = p - n/K; grad W = grad b x^T
    z = np.array([1.0, 2.5, -1.5])
    p = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(p, [0.179734, 0.805512, 0.014753], atol=1e-6)
    grad_b = p - np.array([2, 0, 3]) / 5
    np.testing.assert_allclose(g["grad_bias"].numpy(), grad_b, rtol=1e-12)
    np.testing.assert_allclose(g["grad_weight"].numpy(), np.outer(grad_b, X3), rtol=1e-12)

    emb = class_embeddings(g["grad_weight"], g["grad_bias"])
    np.testing.assert_allclose(emb.numpy(), np.tile(X3, (3, 1)), rtol=1e-12)
    probs = class_probabilities(emb, g["weight"], g["bias"], precision="float64")
    np.testing.assert_allclose(probs.numpy(), np.tile(p, (3, 1)), rtol=1e-12)

    r = restore_labels("ilrg", **g)  # float32 logits (the default): float solution exact to ~1e-7
    np.testing.assert_allclose(r.details["float_counts"], [2.0, 0.0, 3.0], atol=1e-6)
    r64 = restore_labels("ilrg", **g, precision="float64")
    np.testing.assert_allclose(r64.details["float_counts"], [2.0, 0.0, 3.0], atol=1e-12)
    assert r.counts.tolist() == [2, 0, 3]
    assert r.raw_counts.tolist() == [2, 0, 3]
    assert r.present.tolist() == [True, False, True]
    assert r.labels.tolist() == [0, 0, 2, 2, 2]
    assert r.method == "ilrg" and r.seconds > 0


def test_ilrg_one_class_batch_with_a_float_count_above_k():
    # Uniform outputs (W = 0, b = 0), K = 5 samples all of class 0, C = 3: the system is exact, n = K/C - K grad b.
    # Gradients scaled by 1.21 give n_0 = 5/3 + 5 * 1.21 * 2/3 = 5.7, which rounds above K, and
    # n_1 = n_2 = (5 - 6.05)/3 = -0.35.
    fc = linear_layer(np.zeros((3, 2)), np.zeros(3))
    g = mean_ce_grads(
        fc,
        torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
        torch.zeros(5, dtype=torch.long),
    )
    g = {**g, "grad_weight": g["grad_weight"] * 1.21, "grad_bias": g["grad_bias"] * 1.21}
    r = restore_labels("ilrg", **g)
    np.testing.assert_allclose(r.details["float_counts"], [5.7, -0.35, -0.35], atol=1e-9)
    assert r.raw_counts.tolist() == [0, 0, 0]  # the paper's rule (what it scores): above K -> 0
    assert r.counts.tolist() == [5, 0, 0] and r.labels.tolist() == [0] * 5  # the whole batch, not spread out
    assert r.present.tolist() == [True, False, False]
    assert r.diagnostics == ()  # sum |grad b| = 1.21 * 4/3 < 2, no residual: consistent


def test_ilrg_float32_inputs_of_the_hand_case():
    fc = linear_layer(W3, B3)
    labels = torch.tensor([0, 0, 2, 2, 2])
    g = mean_ce_grads(fc, torch.tensor([X3] * 5, dtype=torch.float64), labels)
    g32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in g.items()}
    r = restore_labels("ilrg", **g32)
    assert r.counts.tolist() == [2, 0, 3]
    np.testing.assert_allclose(r.details["float_counts"], [2.0, 0.0, 3.0], atol=1e-5)


def test_ilrg_exact_when_model_outputs_are_uniform():
    # W = 0, b = 0: every probability (true and class-wise) is 1/C whatever the inputs, so the system is exact
    # with distinct random inputs too: row i reads K/C - n_i = K grad b_i.
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 1, 1, 1, 4, 4, 4])
    fc = linear_layer(np.zeros((5, 6)), np.zeros(5))
    g = mean_ce_grads(fc, torch.randn(8, 6, dtype=torch.float64), labels)
    r = restore_labels("ilrg", **g)
    np.testing.assert_allclose(r.details["float_counts"], [1, 4, 0, 0, 3], atol=1e-9)
    assert r.counts.tolist() == [1, 4, 0, 0, 3]


def test_ilrg_realistic_untrained_mlp():
    # Untrained 2-layer ReLU MLP, C=10, M=64, K=8 distinct random inputs, true gradient by autograd.
    torch.manual_seed(1)
    body = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
    fc = nn.Linear(64, 10)
    labels = torch.randint(0, 10, (8,))
    x = torch.randn(8, 32)
    g = mean_ce_grads(fc, body(x).detach(), labels)
    true = counts_from_labels(labels, 10)
    assert true.max() >= 2  # the seed gives a repeated label: counting, not just existence
    r = restore_labels("ilrg", **g)
    m = label_metrics(r.raw_counts, true)
    assert m == {"LeAcc": 1.0, "LnAcc": 1.0, "IRec": 1.0, "count_mae": 0.0, "sums_to_k": True}
    assert np.array_equal(r.counts, true)
    assert r.labels.tolist() == sorted(labels.tolist())
    # every solver and both precisions give the same answer
    for options in (
        {"solver": "lu"},
        {"solver": "gelsy"},
        {"solver": "gelsd"},
        {"solver": "pinv"},
        {"precision": "float64"},
    ):
        other = restore_labels("ilrg", **g, **options)
        assert np.array_equal(other.raw_counts, r.raw_counts), options
        np.testing.assert_allclose(other.details["float_counts"], r.details["float_counts"], atol=1e-4)


def test_ilrg_numpy_and_torch_inputs_agree():
    torch.manual_seed(2)
    fc = nn.Linear(16, 7)
    labels = torch.tensor([1, 1, 3, 6])
    g = mean_ce_grads(fc, torch.relu(torch.randn(4, 16)), labels)
    as_np = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in g.items()}
    a, b = restore_labels("ilrg", **g), restore_labels("ilrg", **as_np)
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.raw_counts, b.raw_counts)
    assert a.counts.tolist() == [0, 2, 0, 1, 0, 0, 1]
    # numpy int batch size and positional call through the registry function
    c = get_method("ilrg")(g["grad_weight"], g["grad_bias"], g["weight"], g["bias"], np.int64(4))
    assert np.array_equal(c.counts, a.counts)


def test_result_fields_and_dtypes():
    fc = linear_layer(W3, B3)
    g = mean_ce_grads(fc, torch.tensor([X3] * 5, dtype=torch.float64), torch.tensor([0, 0, 2, 2, 2]))
    for name in METHOD_NAMES:
        r = restore_labels(name, **g, **options_for(name, g))
        assert isinstance(r, RestorationResult)
        assert r.method == name
        assert r.counts.dtype == np.int64 and r.counts.shape == (3,)
        assert r.raw_counts.dtype == np.int64 and r.raw_counts.shape == (3,)
        assert r.present.dtype == bool and r.present.shape == (3,)
        assert r.labels.dtype == np.int64 and r.labels.shape == (5,)
        assert r.counts.sum() == 5 and r.counts.min() >= 0 and r.batch_size == 5 and r.num_classes == 3
        assert np.array_equal(r.labels, np.sort(r.labels))
        assert np.array_equal(np.bincount(r.labels, minlength=3), r.counts)
        assert math.isfinite(r.seconds) and r.seconds >= 0


# ---------------------------------------------------------------- class-wise embeddings (the get_emb bound)


def reference_get_emb(w: float, b: float, exp_thre: int = 10) -> float:
    """Scalar oracle of the released get_emb: decimal mantissa/exponent split, b = 0 as 1e-64, exponent
    difference clamped. The split uses the shortest decimal that round-trips (repr) instead of '%e', so the
    mantissa is not rounded to 6 digits (as in label_restore)."""

    def split(x):
        if x == 0.0:
            return 0.0, 0
        d = Decimal(repr(x))
        return float(d.scaleb(-d.adjusted())), d.adjusted()

    (mw, ew), (mb, eb) = split(w), split(b)
    if mb == 0.0:
        mb, eb = 1.0, -64
    d = min(max(ew - eb, -exp_thre), exp_thre)
    return mw / mb * 10.0**d


def test_class_embeddings_match_the_bounded_reference():
    rows = [
        ([2.0, -4.0, 0.0, 1e3, 1e-3], -2.0),  # plain ratios (and a zero)
        ([1.0, -3.0, 5e-12, 0.0, 7.0], 1e-12),  # ratios 1e12: exponent difference clamped to +10
        ([1e-15, 2e-14, 3.0, 1000.0, 0.1], 7.0),  # ratios < 1e-10: clamped to -10
        ([3.0, -0.5, 0.0, 1e-30, 123.456], 0.0),  # grad b = 0 -> 1e-64: everything nonzero clamped to +10
        ([9.999999999e-5, 1e-5, 1.0, 1e10, 1e-10], 1.0),  # powers of ten at the log10 edges
    ]
    gw = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    gb = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    got = class_embeddings(gw, gb).numpy()
    want = np.array([[reference_get_emb(w, r[1]) for w in r[0]] for r in rows])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert got[3, 0] == pytest.approx(3e10) and got[3, 1] == pytest.approx(-5e10) and got[3, 2] == 0.0
    # float32: same rule, result in float32
    got32 = class_embeddings(gw.float(), gb.float())
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), want, rtol=1e-6)


def test_class_embeddings_random_rows_are_plain_ratios():
    torch.manual_seed(3)
    gw, gb = torch.randn(50, 40), torch.randn(50)
    emb = class_embeddings(gw, gb)
    torch.testing.assert_close(emb, gw / gb[:, None])


# ---------------------------------------------------------------- errors


@pytest.fixture()
def hand_grads():
    fc = linear_layer(W3, B3)
    return mean_ce_grads(fc, torch.tensor([X3] * 5, dtype=torch.float64), torch.tensor([0, 0, 2, 2, 2]))


def test_unknown_method_lists_the_valid_names(hand_grads):
    with pytest.raises(ValueError) as err:
        restore_labels("ilgr", **hand_grads)
    for name in METHOD_NAMES:
        assert name in str(err.value)
    assert "ilgr" in str(err.value)


def test_unknown_option(hand_grads):
    with pytest.raises(ValueError, match="unknown option.*solvr.*valid options: precision, alpha, exp_clamp, solver"):
        restore_labels("ilrg", **hand_grads, solvr="pinv")
    with pytest.raises(ValueError, match="unknown solver 'qr'"):
        restore_labels("ilrg", **hand_grads, solver="qr")


@pytest.mark.parametrize(
    "change, pattern",
    [
        ({"grad_bias": torch.zeros(4)}, r"grad_bias has shape \(4,\) but grad_weight has shape \(3, 2\)"),
        ({"weight": torch.zeros(3, 5)}, r"weight has shape \(3, 5\) but grad_weight has shape \(3, 2\)"),
        ({"bias": torch.zeros(2)}, r"bias has shape \(2,\) but grad_weight has shape \(3, 2\)"),
        ({"grad_weight": torch.zeros(6)}, r"grad_weight must be a 2-D array of shape \(C, M\).*got shape \(6,\)"),
        ({"grad_bias": torch.zeros(3, 1)}, r"grad_bias must be a 1-D array of shape \(C,\).*got shape \(3, 1\)"),
    ],
)
def test_shape_mismatch_names_the_arguments(hand_grads, change, pattern):
    with pytest.raises(ValueError, match=pattern):
        restore_labels("ilrg", **{**hand_grads, **change})


@pytest.mark.parametrize("name", ["grad_weight", "grad_bias", "weight", "bias"])
def test_non_finite_values(hand_grads, name):
    bad = hand_grads[name].clone()
    bad.view(-1)[1] = float("nan")
    with pytest.raises(ValueError, match=f"{name} contains 1 non-finite value"):
        restore_labels("ilrg", **{**hand_grads, name: bad})
    bad.view(-1)[1] = float("inf")
    with pytest.raises(ValueError, match=f"{name} contains 1 non-finite value"):
        restore_labels("ilrg", **{**hand_grads, name: bad})


def test_huge_finite_values_are_not_mistaken_for_inf(hand_grads):
    # the fast finite check sums the tensor; an overflowing sum of finite values must not raise
    big = torch.full((3, 2), 3e38, dtype=torch.float32)
    with pytest.warns(InconsistentGradientWarning, match="raw counts sum to 3, batch size 2"):  # 3 present, K=2
        r = restore_labels("idlg", grad_weight=-big, batch_size=2)
    assert r.counts.sum() == 2


@pytest.mark.parametrize("k", [0, -3, 2.5, 2.7, 5.0, "5", None, True, torch.tensor(2.7)])
def test_bad_batch_size(hand_grads, k):
    with pytest.raises(ValueError, match="batch_size must be an integer K >= 1"):
        restore_labels("ilrg", **{**hand_grads, "batch_size": k})


def test_ilrg_without_bias_gradient_says_why(hand_grads):
    with pytest.raises(ValueError, match="no bias, ilrg cannot run.*idlg, gi, rlg or llg"):
        restore_labels("ilrg", **{**hand_grads, "grad_bias": None})
    with pytest.raises(ValueError, match="ilrg needs bias"):
        restore_labels("ilrg", **{**hand_grads, "bias": None})
    with pytest.raises(ValueError, match="ilrg needs weight"):
        restore_labels("ilrg", **{**hand_grads, "weight": None})
    with pytest.raises(ValueError, match="bias_corrected needs grad_bias"):
        restore_labels("bias_corrected", grad_weight=hand_grads["grad_weight"], batch_size=5)


def test_methods_that_need_only_grad_weight_ignore_the_rest(hand_grads):
    for name in ("idlg", "gi", "rlg", "llg"):
        alone = restore_labels(name, grad_weight=hand_grads["grad_weight"], batch_size=5)
        full = restore_labels(name, **hand_grads)
        assert np.array_equal(alone.counts, full.counts), name
    r = restore_labels("bias_corrected", grad_bias=hand_grads["grad_bias"], batch_size=5)
    assert r.counts.tolist() == [2, 0, 3]


def test_leaf_package_imports_no_inversion():
    code = (
        "import sys, label_restore, label_restore.benchmark; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('inversion', 'torchvision')]; "
        "assert not bad, bad"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_ilrg_survives_a_zero_bias_gradient_entry():
    # grad b_i = 0 -> the released code's 1e-64 with the exponent clamp: e_i huge, p_i one-hot; still solvable
    torch.manual_seed(0)
    fc = nn.Linear(16, 6)
    g = mean_ce_grads(fc, torch.relu(torch.randn(5, 16)), torch.tensor([0, 0, 1, 2, 2]))
    gb = g["grad_bias"].clone()
    gb[5] = 0.0  # a corrupted (inconsistent) gradient: only robustness is checked
    emb = class_embeddings(g["grad_weight"], gb)
    assert emb[5].abs().max() >= 1e9  # mantissa * 10^10
    r = restore_labels("ilrg", **{**g, "grad_bias": gb})
    assert r.counts.sum() == 5 and r.counts.min() >= 0
    assert np.isfinite(r.details["float_counts"]).all()
    assert r.counts[:3].tolist() == [2, 1, 2]  # (for this seed the batch's classes are still found)


def test_docstring_examples():
    import doctest
    import importlib

    for name in ("counting", "metrics", "result", "ilrg", "existence", "llg", "rlg", "linsolve", "api", "consistency"):
        module = importlib.import_module(f"label_restore.{name}")
        result = doctest.testmod(module, extraglobs={"np": np, "torch": torch}, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name
