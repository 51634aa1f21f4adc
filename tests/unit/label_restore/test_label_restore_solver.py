"""label_restore.linsolve: every solver returns the Moore-Penrose solution pinv(A) @ y, rank-deficient too."""

import numpy as np
import pytest
import torch

from label_restore import linsolve
from label_restore.linsolve import count_system, min_norm_lstsq, solve_count_system


def pinv_solution(a, y):
    return np.linalg.pinv(a) @ y


def random_probs(rng, c, scale=2.0):
    z = rng.normal(0, scale, size=(c, c))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)  # rows = class-wise probabilities, each sums to one


@pytest.mark.parametrize("driver", ["gelsy", "gelsd"])
def test_general_solver_equals_pinv_on_random_systems(driver):
    rng = np.random.default_rng(0)
    for c in (1, 2, 7, 40):
        a = rng.normal(size=(c + 1, c))
        y = rng.normal(size=c + 1)
        np.testing.assert_allclose(min_norm_lstsq(a, y, driver), pinv_solution(a, y), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("driver", ["gelsy", "gelsd"])
def test_general_solver_equals_pinv_on_a_rank_deficient_system(driver):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(31, 30))
    a[:, 4] = a[:, 7]  # two equal columns
    a[:, 9] = 0.0  # a zero column
    a[:, 12] = 2.0 * a[:, 3] - a[:, 5]  # a dependent column
    assert np.linalg.matrix_rank(a) == 27
    y = rng.normal(size=31)
    x = min_norm_lstsq(a, y, driver)
    np.testing.assert_allclose(x, pinv_solution(a, y), rtol=1e-8, atol=1e-10)
    assert x[9] == pytest.approx(0.0, abs=1e-12)  # minimum norm: no weight on a free direction
    assert x[4] == pytest.approx(x[7], rel=1e-9)


@pytest.fixture()
def always_mixed(monkeypatch):
    """Let "auto" try the float32-LU-with-refinement step at every size (by default only from C = 256)."""
    monkeypatch.setattr(linsolve, "MIXED_MIN_SIZE", 1)


@pytest.mark.parametrize("c", [1, 2, 3, 10, 120, 300])
def test_count_system_solvers_equal_pinv_on_stochastic_systems(c):
    rng = np.random.default_rng(c)
    p = random_probs(rng, c)
    gb = rng.normal(0, 0.05, size=c)
    gb -= gb.mean()
    a, y = count_system(p, gb, 16)
    want = pinv_solution(a, y)
    solvers = ("auto", "lu") if c >= 256 else ("auto", "lu", "gelsy", "gelsd", "pinv")  # keep the test fast
    for solver in solvers:
        got, _info = solve_count_system(p, gb, 16, solver=solver)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=solver)
    assert solve_count_system(p, gb, 16)[1]["solver"] == ("lu-mixed" if c >= 256 else "lu")
    assert solve_count_system(p, gb, 16, solver="lu")[1]["solver"] == "lu"


@pytest.mark.parametrize("c", [1, 2, 10, 120])
def test_mixed_precision_step_equals_pinv(c, always_mixed):
    rng = np.random.default_rng(100 + c)
    p = random_probs(rng, c)
    gb = rng.normal(0, 0.05, size=c)
    got, info = solve_count_system(p, gb, 16)
    assert info["solver"] == "lu-mixed"
    np.testing.assert_allclose(got, pinv_solution(*count_system(p, gb, 16)), rtol=1e-9, atol=1e-9)


def test_count_system_layout():
    p = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.0, 0.5, 0.5]])  # row j = p_j
    a, y = count_system(p, np.array([0.1, -0.3, 0.2]), 4)
    np.testing.assert_allclose(a, [[1, 1, 1], [-0.3, 0.3, 0.0], [0.2, -0.7, 0.5], [0.1, 0.4, -0.5]])
    np.testing.assert_allclose(y, [4, 0.4, -1.2, 0.8])


@pytest.mark.parametrize("mixed", [False, True])
def test_rank_deficient_count_system_falls_back_and_equals_pinv(mixed, monkeypatch):
    if mixed:
        monkeypatch.setattr(linsolve, "MIXED_MIN_SIZE", 1)
    # classes 3 and 7 have probabilities one-hot on themselves: columns 3 and 7 of A are both (1, 0, ..., 0),
    # so only n_3 + n_7 is determined; pinv (minimum norm) splits it equally.
    rng = np.random.default_rng(5)
    c = 12
    p = random_probs(rng, c)
    for j in (3, 7):
        p[j] = 0.0
        p[j, j] = 1.0
    gb = rng.normal(0, 0.05, size=c)
    a, y = count_system(p, gb, 8)
    assert np.linalg.matrix_rank(a) == c - 1
    want = pinv_solution(a, y)
    for solver in ("auto", "lu", "gelsy", "gelsd"):
        got, info = solve_count_system(p, gb, 8, solver=solver)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=solver)
        assert got[3] == pytest.approx(got[7], rel=1e-9)
        # the residual ||A n - y|| (grad b does not sum to 0 here), whichever system was solved
        assert info["residual"] == pytest.approx(np.linalg.norm(a @ got - y), rel=1e-9), solver
    assert solve_count_system(p, gb, 8)[1]["solver"] == "gelsy"


def test_reducible_probabilities_rank_deficient_block_system_equals_pinv(always_mixed):
    # two groups of classes that never put probability on each other: P - I has rank C - 2, A rank C - 1
    rng = np.random.default_rng(6)
    p = np.zeros((9, 9))
    p[:4, :4] = random_probs(rng, 4)
    p[4:, 4:] = random_probs(rng, 5)
    gb = rng.normal(0, 0.05, size=9)
    a, y = count_system(p, gb, 10)
    assert np.linalg.matrix_rank(a) == 8
    got, info = solve_count_system(p, gb, 10)
    assert info["solver"] == "gelsy"
    np.testing.assert_allclose(got, pinv_solution(a, y), rtol=1e-9, atol=1e-9)
    assert info["residual"] == pytest.approx(np.linalg.norm(a @ got - y), rel=1e-9)


@pytest.mark.parametrize("mixed", [False, True])
def test_nearly_singular_system_still_matches_pinv(mixed, monkeypatch):
    if mixed:
        monkeypatch.setattr(linsolve, "MIXED_MIN_SIZE", 1)
    # classes 5 and 6 one-hot on themselves up to 1e-9: nearly equal columns, kappa ~ 1e9 (too much for the
    # float32 factors, fine for float64 LU or gelsy)
    rng = np.random.default_rng(7)
    c = 20
    p = random_probs(rng, c)
    for j in (5, 6):
        p[j] *= 1e-9
        p[j, j] += 1.0 - p[j].sum()
    gb = rng.normal(0, 0.05, size=c)
    gb -= gb.mean()
    a, y = count_system(p, gb, 8)
    assert 1e7 < np.linalg.cond(a) < 1e12
    want = pinv_solution(a, y)
    got, info = solve_count_system(p, gb, 8)
    assert info["solver"] in ("lu", "gelsy")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_rows_not_summing_to_one_use_the_explicit_system():
    rng = np.random.default_rng(8)
    p = random_probs(rng, 6) * 1.01
    gb = rng.normal(0, 0.05, size=6)
    got, info = solve_count_system(p, gb, 5)
    assert info["solver"] == "gelsy"
    np.testing.assert_allclose(got, pinv_solution(*count_system(p, gb, 5)), rtol=1e-9, atol=1e-9)


def test_solver_does_not_modify_its_input_unless_allowed():
    rng = np.random.default_rng(9)
    p = torch.as_tensor(random_probs(rng, 8))
    before = p.clone()
    solve_count_system(p, torch.zeros(8, dtype=torch.float64), 4)
    assert torch.equal(p, before)
    solve_count_system(p, torch.zeros(8, dtype=torch.float64), 4, overwrite=True)
    assert not torch.equal(p, before)


def test_unknown_solver():
    with pytest.raises(ValueError, match="unknown solver 'svd'"):
        solve_count_system(np.eye(2), np.zeros(2), 1, solver="svd")
    with pytest.raises(ValueError, match="unknown least-squares driver"):
        min_norm_lstsq(np.eye(2), np.zeros(2), driver="gelss")
