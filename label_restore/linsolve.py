"""Minimum-norm least-squares solvers for iLRG's count system.

iLRG (Ma et al., ICLR 2023, Eq. 9) solves for the instance counts :math:`n \\in \\mathbb{R}^C`

.. math::

    A n = y, \\qquad
    A = \\begin{bmatrix} \\mathbf 1^\\top \\\\ P - I \\end{bmatrix} \\in \\mathbb{R}^{(C+1)\\times C}, \\qquad
    y = \\begin{bmatrix} K \\\\ K\\,\\nabla b \\end{bmatrix},

with :math:`P_{ij} = \\hat p_j[i]` (column :math:`j` is the class-wise probability vector of class :math:`j`),
and takes the Moore-Penrose solution :math:`n = A^+ y` (the minimum-norm least-squares solution).

:func:`solve_count_system` computes the same vector fast by using the structure of :math:`A`: every column of
:math:`P` sums to one, so :math:`\\mathbf 1^\\top (P - I) = 0`. A Householder reflection :math:`H` with
:math:`H \\mathbf 1 = -\\sqrt C e_1` therefore zeroes the first row of :math:`H(P-I)`, and

.. math::

    \\lVert A n - y\\rVert^2 = \\lVert S n - t\\rVert^2 + \\text{const}, \\quad
    S = \\begin{bmatrix} \\mathbf 1^\\top \\\\ [H(P-I)]_{2:C} \\end{bmatrix} \\in \\mathbb{R}^{C\\times C}, \\quad
    t = \\begin{bmatrix} K \\\\ [H K\\nabla b]_{2:C} \\end{bmatrix}.

:math:`S^\\top S = A^\\top A`, so :math:`S` has the singular values of :math:`A` and the same minimum-norm
least-squares solution. The solution is then computed, in this order, by

1. float32 LU with float64 iterative refinement (LAPACK ``dsgesv``'s scheme; it converges only for
   well-conditioned :math:`S`, and then gives the float64-accurate, unique solution :math:`S^{-1} t`); else
2. float64 LU if the LAPACK ``gecon`` reciprocal condition estimate exceeds ``rcond_threshold``; else
3. LAPACK ``gelsy`` on :math:`S` (complete orthogonal factorisation: the minimum-norm solution of a
   rank-deficient system, the rank cut at :math:`\\epsilon \\max(C+1, C)\\,\\sigma_{\\max}` like ``pinv``'s
   default), e.g. when two classes' probabilities are one-hot on themselves (equal columns of :math:`A`) or
   the classes split into groups that put no probability on each other.

Measured at :math:`C = 1000` on 2 CPU cores: step 1 ~8-13 ms (MKL through torch), step 2 ~12-18 ms,
``gelsy`` ~50-70 ms (scipy's LAPACK; torch's ``gelsy`` is not used, see :func:`_gelsy`), ``gelsd`` ~130 ms,
``numpy.linalg.pinv`` ~300 ms. The explicit solvers remain available as ``solver="gelsy" | "gelsd" | "pinv"``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.linalg import lapack

from .errors import LabelRestoreInputError

__all__ = ["SOLVERS", "count_system", "min_norm_lstsq", "solve_count_system"]

SOLVERS = ("auto", "lu", "gelsy", "gelsd", "pinv")

#: Below this reciprocal 1-norm condition estimate the LU path hands over to ``gelsy``.
#: ``pinv`` cuts singular values below ~2e-13 of the largest (1e-13 ... 1e-12 in 1-norm terms), so LU only
#: runs where ``pinv`` keeps the full rank and LU's error (~1e-16 / rcond) stays below 1e-6.
RCOND_THRESHOLD = 1e-10

#: ``"auto"`` tries float32 LU with refinement from this size on; below it float64 LU is as fast.
MIXED_MIN_SIZE = 256


def _as_f64(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def count_system(probs: Any, grad_bias: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The explicit iLRG system :math:`(A, y)` (float64), as the paper writes it.

    Args:
        probs: class-wise probabilities, shape :math:`(C, C)`, row :math:`j` = :math:`\\hat p_j`.
        grad_bias: :math:`\\nabla b`, shape :math:`(C,)`.
        batch_size: :math:`K`.

    Returns:
        ``A`` of shape :math:`(C+1, C)` with row 0 all ones and rows :math:`1..C` = :math:`P - I`
        (:math:`P = ` ``probs.T``), and ``y`` of shape :math:`(C+1,)` = :math:`[K, K\\nabla b]`.
    """
    p = _as_f64(probs).numpy()
    c = p.shape[0]
    a = np.empty((c + 1, c), dtype=np.float64)
    a[0] = 1.0
    a[1:] = p.T
    a[1:][np.diag_indices(c)] -= 1.0
    y = np.empty(c + 1, dtype=np.float64)
    y[0] = batch_size
    y[1:] = batch_size * _as_f64(grad_bias).numpy()
    return a, y


def _gelsy(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LAPACK ``dgelsy`` (scipy's binding) with the pivot array zeroed, rank cut ``eps * max(m, n)``.

    ``torch.linalg.lstsq(driver="gelsy")`` on CPU leaves LAPACK's ``JPVT`` input uninitialised, so stale
    memory marks random columns as fixed and rank-deficient solutions come out wrong at random
    (pytorch/pytorch#92537, #187411; reproduced with torch 2.13); hence scipy's binding here.
    """
    m, n = a.shape
    rcond = np.finfo(np.float64).eps * max(m, n)
    lwork = int(lapack.dgelsy_lwork(m, n, 1, rcond)[0])
    rhs = np.zeros((max(m, n), 1))
    rhs[:m, 0] = y
    _, x, _, _, info = lapack.dgelsy(a, rhs, np.zeros(n, dtype=np.int32), rcond, lwork=lwork)
    if info != 0:
        raise RuntimeError(f"LAPACK dgelsy failed (info={info}).")
    return x[:n, 0].copy()


def min_norm_lstsq(a: Any, y: Any, driver: str = "gelsy") -> np.ndarray:
    """Minimum-norm least-squares solution :math:`A^+ y` of a general system (float64).

    Args:
        a: :math:`(m, n)` matrix.
        y: :math:`(m,)` right-hand side.
        driver: ``"gelsy"`` (QR with column pivoting, complete orthogonal factorisation; LAPACK via scipy),
            ``"gelsd"`` (SVD, divide and conquer; LAPACK/MKL via torch) — both with the rank cut-off
            :math:`\\epsilon \\max(m, n)\\,\\sigma_{\\max}` of ``numpy.linalg.pinv`` — or ``"pinv"``
            (``numpy.linalg.pinv(a) @ y``, the paper's code; the reference).

    Returns:
        :math:`x`, shape :math:`(n,)`, float64.
    """
    at, yt = _as_f64(a), _as_f64(y).reshape(-1)
    if driver == "pinv":
        return np.linalg.pinv(at.numpy()) @ yt.numpy()
    if driver == "gelsy":
        return _gelsy(at.numpy(), yt.numpy())
    if driver == "gelsd":
        return torch.linalg.lstsq(at, yt.reshape(-1, 1), driver="gelsd").solution.reshape(-1).numpy()
    raise LabelRestoreInputError(f"unknown least-squares driver {driver!r}; use 'gelsy', 'gelsd' or 'pinv'.")


def _reduced_system(
    probs: torch.Tensor, rhs: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Square :math:`(S, t)` (see the module docstring) and the right-hand side of the zeroed row; ``probs`` is
    overwritten.

    Built in place on ``probs``: :math:`T = \\hat P - I` (rows :math:`\\hat p_j`) is :math:`(P - I)^\\top`;
    :math:`T H = T - \\beta (T v) v^\\top` is :math:`[H(P-I)]^\\top`; its column 0 (the zeroed row) is replaced
    by ones. :math:`S = T^\\top` is returned as a (Fortran-ordered) view. The zeroed row's right-hand side
    :math:`[H K \\nabla b]_1 = -K \\sum_i \\nabla b_i / \\sqrt C` no ``n`` can meet, so
    :math:`\\lVert A n - y\\rVert^2 = \\lVert S n - t\\rVert^2 + [H K\\nabla b]_1^2`.
    """
    c = probs.shape[0]
    t_mat = probs
    t_mat.diagonal().sub_(1.0)
    v = torch.ones(c, dtype=torch.float64)
    v[0] += math.sqrt(c)
    beta = 2.0 / float(v @ v)
    t_mat.addr_(t_mat @ v, v, alpha=-beta)
    t_mat[:, 0] = 1.0
    t = rhs - (beta * float(v @ rhs)) * v
    unmet = float(t[0])
    t[0] = float(batch_size)
    return t_mat.mT, t, unmet


def _reduced_residual(s: torch.Tensor, t: torch.Tensor, unmet: float, sol: torch.Tensor) -> float:
    """:math:`\\lVert A n - y\\rVert_2` from the reduced system (:func:`_reduced_system`), :math:`O(C^2)`."""
    return math.hypot(float(torch.linalg.vector_norm(torch.addmv(t, s, sol, alpha=-1.0))), unmet)


def _explicit_solve(p: torch.Tensor, grad_bias: Any, batch_size: int, driver: str) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`min_norm_lstsq` on the explicit system :math:`(A, y)`, with its residual."""
    a, y = count_system(p, grad_bias, batch_size)
    sol = min_norm_lstsq(a, y, driver=driver)
    return sol, {"solver": driver, "rcond": None, "residual": float(np.linalg.norm(a @ sol - y))}


def solve_count_system(
    probs: Any,
    grad_bias: Any,
    batch_size: int,
    solver: str = "auto",
    rcond_threshold: float = RCOND_THRESHOLD,
    overwrite: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Solve iLRG's count system for the minimum-norm least-squares :math:`n = A^+ y` (float64).

    Args:
        probs: class-wise probabilities, shape :math:`(C, C)`, row :math:`j` = :math:`\\hat p_j` (each row sums
            to one; float64 rows normalised to machine precision take the fast path).
        grad_bias: :math:`\\nabla b`, shape :math:`(C,)`.
        batch_size: :math:`K`.
        solver: ``"auto"`` (the default: reduced square system by float32 LU with float64 iterative
            refinement for :math:`C \\ge 256`; if that does not converge, or for smaller :math:`C`, ``"lu"``),
            ``"lu"`` (reduced system by float64 LU when the
            ``gecon`` estimate says it is well conditioned, else ``gelsy`` on it), or ``"gelsy"``,
            ``"gelsd"``, ``"pinv"`` on the explicit :math:`(C+1)\\times C` system (the paper's form).
            Rows of ``probs`` that do not sum to one always get ``gelsy`` on the explicit system.
        rcond_threshold: the float64 LU step is used only if the ``gecon`` reciprocal condition estimate
            exceeds this (else ``gelsy``).
        overwrite: allow the reduction to overwrite ``probs`` in place (a float64 CPU tensor), saving a copy.

    Returns:
        ``(n, info)``: the float solution, shape :math:`(C,)`, and ``{"solver": which ran ("lu-mixed", "lu",
        "gelsy", "gelsd" or "pinv"), "rcond": the gecon estimate or None, "residual": ||A n - y||_2}`` (plus
        ``"iterations"`` of the refinement for "lu-mixed"). The residual is in samples (rows of :math:`A` count
        instances); for a nonsingular reduced system it is :math:`K |\\sum_i \\nabla b_i| / \\sqrt C`.
    """
    if solver not in SOLVERS:
        raise LabelRestoreInputError(f"unknown solver {solver!r}; valid solvers: {', '.join(SOLVERS)}.")
    p = _as_f64(probs)
    if p.ndim != 2 or p.shape[0] != p.shape[1]:
        raise LabelRestoreInputError(f"probs must be a square (C, C) matrix; got shape {tuple(p.shape)}.")
    if solver in ("gelsy", "gelsd", "pinv"):
        return _explicit_solve(p, grad_bias, batch_size, solver)

    stochastic = bool((p.sum(dim=1) - 1.0).abs().max() <= 1e-12 * max(1, p.shape[0]))
    if not stochastic:  # the reduction needs 1^T (P - I) = 0; keep the explicit system
        return _explicit_solve(p, grad_bias, batch_size, "gelsy")

    work = p if overwrite else p.clone()
    s, t, unmet = _reduced_system(work, float(batch_size) * _as_f64(grad_bias).reshape(-1), batch_size)
    if solver == "auto" and s.shape[0] >= MIXED_MIN_SIZE:
        sol, iterations = _mixed_precision_solve(s, t)
        if sol is not None:
            residual = _reduced_residual(s, t, unmet, sol)
            return sol.numpy(), {"solver": "lu-mixed", "rcond": None, "iterations": iterations, "residual": residual}
    anorm = float(s.abs().sum(dim=0).max())
    lu, pivots, info = torch.linalg.lu_factor_ex(s)
    rcond = 0.0
    if int(info) == 0:
        rcond = float(lapack.dgecon(lu.numpy(), anorm, norm="1")[0])
    if int(info) == 0 and rcond > rcond_threshold:
        sol = torch.linalg.lu_solve(lu, pivots, t.reshape(-1, 1)).reshape(-1)
        return sol.numpy(), {"solver": "lu", "rcond": rcond, "residual": _reduced_residual(s, t, unmet, sol)}
    sol = torch.from_numpy(_gelsy(s.numpy(), t.numpy()))
    return sol.numpy(), {"solver": "gelsy", "rcond": rcond, "residual": _reduced_residual(s, t, unmet, sol)}


def _mixed_precision_solve(s: torch.Tensor, t: torch.Tensor, max_iter: int = 30) -> tuple[torch.Tensor | None, int]:
    """Solve :math:`S x = t` by float32 LU with float64 iterative refinement (LAPACK ``dsgesv``'s scheme).

    Refine :math:`x \\leftarrow x + (LU)^{-1}(t - S x)` (residual in float64) until the residual passes
    ``dsgesv``'s test :math:`\\lVert r\\rVert_\\infty \\le \\lVert x\\rVert_\\infty \\lVert S\\rVert_\\infty
    \\sqrt{C}\\, \\epsilon_{64}` (a float64-accurate solution). That only happens when
    :math:`\\kappa(S)\\, \\epsilon_{32} \\ll 1`, i.e. for well-conditioned systems, where the solution is unique
    and equals :math:`A^+ y`. Returns ``(None, iterations)`` when :math:`S` is singular in float32, the
    residual stops shrinking, or ``max_iter`` is reached; the caller then uses float64.
    """
    lu, pivots, info = torch.linalg.lu_factor_ex(s.to(torch.float32))
    if int(info) != 0:
        return None, 0
    c = s.shape[0]
    tol = float(s.abs().sum(dim=1).max()) * math.sqrt(c) * torch.finfo(torch.float64).eps
    x = torch.linalg.lu_solve(lu, pivots, t.to(torch.float32).reshape(-1, 1)).to(torch.float64).reshape(-1)
    previous = math.inf
    for iteration in range(max_iter):
        r = torch.addmv(t, s, x, alpha=-1.0)
        rnorm = float(r.abs().max())
        if not math.isfinite(rnorm):
            return None, iteration
        if rnorm <= float(x.abs().max()) * tol:
            return x, iteration
        if rnorm > 0.5 * previous:  # not converging: kappa(S) too large for float32 factors
            return None, iteration
        previous = rnorm
        x += torch.linalg.lu_solve(lu, pivots, r.to(torch.float32).reshape(-1, 1)).to(torch.float64).reshape(-1)
    return None, max_iter
