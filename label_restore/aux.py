"""``aux``: label restoration with labelled auxiliary data (the class-conditional estimates of RLU, Chen &
Vikalo, ICML 2024, and of LLG's and breaching's bias-corrected variants).

**Threat model.** iLRG needs only what every server has: the update and the model. ``aux`` also needs a little
*labelled auxiliary data from the same distribution* as the clients' (a public split, never the client's batch)
and the model's softmax outputs on it. An honest-but-curious server usually has such data (it evaluates the
global model on it); a client whose data follows another distribution than the server's breaks the estimate.

**Equations.** For the final layer :math:`z = W e + b` and the mean cross-entropy over :math:`K` samples with
:math:`n_j` samples of class :math:`j`,

.. math::

    K \\nabla b = \\sum_k (p_k - y_k) = \\sum_j n_j (\\bar p_j - e_j),

where :math:`\\bar p_j` is the mean softmax of the batch's class-:math:`j` samples. iLRG estimates
:math:`\\bar p_j` from the gradient itself (:math:`\\operatorname{softmax}(W \\nabla W_j / \\nabla b_j + b)`),
which breaks when :math:`\\nabla b_j \\approx 0`, i.e. when a class holds about :math:`K \\bar p_j[j]` samples
(large batches, trained models). ``aux`` estimates it on the auxiliary data instead,

.. math::  q_j = \\frac{1}{N_j} \\sum_{a:\\, y_a = j} \\operatorname{softmax}(z_a),

and solves iLRG's :math:`(C+1) \\times C` system :math:`\\sum_j n_j = K`,
:math:`\\sum_j n_j (q_j - e_j) = K \\nabla b` for :math:`n \\ge 0` (:func:`nonnegative_counts`). The counts are
exact whenever the batch's class means equal the auxiliary ones (e.g. all samples of a class share one
embedding); otherwise their error is the sum over the batch of each sample's deviation from its class mean,
:math:`\\sum_k (p_k - \\bar q_{y_k})`, which grows like :math:`\\sqrt K` times the within-class spread of the
softmax, tiny for an untrained model and larger for a trained one.

**FedAvg.** For a FedAvg update the gradient is the pseudo-gradient :math:`-\\Delta / (\\eta S)` (the mean of
the S local gradients) and :math:`\\bar p_j` is the class mean of the softmax *along the local trajectory*.
Pass as ``aux_probs`` / ``aux_labels`` the softmax rows of simulated clients' local mini-batches, one per visit
of a sample (RLU's idea; the simulation needs the model and lives in
:func:`inversion.restore.auxiliary.simulated_client_softmax`), or the auxiliary outputs at T models of a trajectory as
:math:`(T, N, C)`, which are averaged over the T models.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._inputs import LayerInputs
from ._method import restoration_method
from .consistency import bias_gradient_findings
from .counting import correct_to_sum, round_counts
from .errors import LabelRestoreInputError
from .linsolve import count_system, solve_count_system
from .result import RestorationResult, make_result

__all__ = ["MISSING_CLASS_RULES", "aux", "class_conditional_probabilities", "nonnegative_counts", "project_to_simplex"]

#: What to do for a class without auxiliary samples: refuse, or use the mean softmax of all auxiliary samples.
MISSING_CLASS_RULES = ("error", "overall_mean")

#: Weight of the sum-to-K row in the non-negative least squares (the rows of the count system are in samples too).
_SUM_ROW_WEIGHT = 1.0e3

#: Optimality gap (squared samples) at which the projected gradient stops, and its step budget.
_GAP_TOLERANCE = 1.0e-8
_MAX_ITERATIONS = 500


def _mean_probs(aux_probs: Any, num_classes: int) -> torch.Tensor:
    """``aux_probs`` checked, averaged over the trajectory axis: a CPU float tensor of shape (N, C)."""
    if aux_probs is None:
        raise LabelRestoreInputError(
            "aux needs aux_probs: the model's softmax outputs on the auxiliary data, shape (N, C) "
            "(or (T, N, C) along a simulated FedAvg trajectory), and aux_labels (N,)."
        )
    probs = aux_probs.detach() if isinstance(aux_probs, torch.Tensor) else torch.as_tensor(np.asarray(aux_probs))
    if probs.device.type == "meta":
        raise LabelRestoreInputError("aux_probs is a meta tensor (no values); pass the softmax outputs themselves.")
    if not probs.is_floating_point():
        raise LabelRestoreInputError(f"aux_probs must hold probabilities (floats); got dtype {probs.dtype}.")
    if probs.ndim not in (2, 3) or probs.shape[-1] != num_classes or 0 in probs.shape:
        raise LabelRestoreInputError(
            f"aux_probs must have shape (N, C) or (T, N, C) with C={num_classes} (the final layer's "
            f"classes) and N, T >= 1; got shape {tuple(probs.shape)}."
        )
    probs = probs.to("cpu")
    if probs.dtype in (torch.float16, torch.bfloat16):
        probs = probs.float()
    if probs.ndim == 3:
        probs = probs.mean(dim=0)
    row_sums = probs.sum(dim=-1)
    if not bool(torch.isfinite(row_sums).all()) or float(probs.min()) < 0:  # NaN and inf reach the row sums
        raise LabelRestoreInputError(
            "aux_probs must hold finite, non-negative softmax outputs (pass softmax(logits), not the logits)."
        )
    worst = float((row_sums - 1.0).abs().max())
    if worst > 1e-3:
        raise LabelRestoreInputError(
            f"every row of aux_probs must sum to 1 (softmax outputs); one is off by {worst:.3g}. "
            "Pass softmax(logits), not the logits."
        )
    return probs


def _as_labels(aux_labels: Any, num_samples: int, num_classes: int) -> torch.Tensor:
    """``aux_labels`` as an int64 CPU tensor of shape (N,), checked."""
    if aux_labels is None:
        raise LabelRestoreInputError("aux needs aux_labels: the true labels of the auxiliary samples, shape (N,).")
    labels = aux_labels.detach() if isinstance(aux_labels, torch.Tensor) else torch.as_tensor(np.asarray(aux_labels))
    if labels.device.type == "meta":
        raise LabelRestoreInputError("aux_labels is a meta tensor (no values); pass the labels themselves.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise LabelRestoreInputError(f"aux_labels must hold integer class indices; got dtype {labels.dtype}.")
    labels = labels.to(device="cpu", dtype=torch.int64)
    if labels.shape != (num_samples,):
        raise LabelRestoreInputError(
            f"aux_labels must have shape ({num_samples},), one label per row of aux_probs; "
            f"got shape {tuple(labels.shape)}."
        )
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise LabelRestoreInputError(
            f"aux_labels must lie in [0, {num_classes - 1}] (C={num_classes} classes); "
            f"got min {int(labels.min())}, max {int(labels.max())}."
        )
    return labels


def class_conditional_probabilities(
    aux_probs: Any, aux_labels: Any, num_classes: int, missing_classes: str = "error", weights: Any = None
) -> tuple[torch.Tensor, np.ndarray, list[int]]:
    """The class-conditional mean softmax :math:`q_j` of the auxiliary data.

    Args:
        aux_probs: softmax outputs, shape :math:`(N, C)`, or :math:`(T, N, C)` at T models of a trajectory.
        aux_labels: labels, shape :math:`(N,)`, in :math:`[0, C)`.
        num_classes: :math:`C`.
        missing_classes: ``"error"`` (refuse a class without auxiliary samples) or ``"overall_mean"`` (use
            the mean softmax of all auxiliary samples for it, and report it).
        weights: :math:`(N,)` non-negative weights of the samples in the means (e.g. how much each visit of a
            simulated FedAvg client counts in its pseudo-gradient); None: all 1.

    Returns:
        ``(q, per_class, missing)``: float64 :math:`(C, C)` with row :math:`j` = :math:`q_j` (mean over the T
        models and the class's samples), the number of auxiliary samples per class :math:`(C,)`, and the
        classes that had none.

    Example:
        >>> q, n, _ = class_conditional_probabilities([[0.6, 0.4], [0.8, 0.2], [0.1, 0.9]], [0, 0, 1], 2)
        >>> [round(v, 6) for v in q.flatten().tolist()], n.tolist()
        ([0.7, 0.3, 0.1, 0.9], [2, 1])
    """
    if missing_classes not in MISSING_CLASS_RULES:
        raise LabelRestoreInputError(
            f"unknown missing_classes {missing_classes!r}; use one of {', '.join(MISSING_CLASS_RULES)}."
        )
    probs = _mean_probs(aux_probs, num_classes)
    labels = _as_labels(aux_labels, probs.shape[0], num_classes)
    per_class = torch.bincount(labels, minlength=num_classes)
    if weights is not None:
        weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64).reshape(-1)
        if (
            weights.numel() != probs.shape[0]
            or not bool((weights >= 0).all())
            or not bool(torch.isfinite(weights).all())
        ):
            raise LabelRestoreInputError(
                f"aux weights must be {probs.shape[0]} finite non-negative numbers (one per auxiliary sample)."
            )
        probs = probs.to(torch.float64) * weights[:, None]  # weighted sums; the rows are normalised below
    sums = torch.zeros(num_classes, num_classes, dtype=probs.dtype).index_add_(0, labels, probs).to(torch.float64)
    missing = (per_class == 0).nonzero().reshape(-1).tolist()
    if missing and missing_classes == "error":
        shown = ", ".join(str(c) for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise LabelRestoreInputError(
            f"the auxiliary data has no sample of {len(missing)} class(es) ({shown}); give more "
            "auxiliary data covering every class, or missing_classes='overall_mean' to use the mean "
            "softmax of all auxiliary samples for them."
        )
    if missing:
        sums[missing] = probs.to(torch.float64).mean(dim=0)
    q = sums / sums.sum(dim=1, keepdim=True)  # the class means, rows normalised in float64
    return q, per_class.numpy(), missing


def project_to_simplex(u: np.ndarray, total: float) -> np.ndarray:
    """Euclidean projection of ``u`` onto :math:`\\{x \\ge 0, \\sum x = \\text{total}\\}` (sort-based,
    :math:`O(C \\log C)`).

    Example:
        >>> project_to_simplex(np.array([3.0, 1.0, -1.0]), 2.0).tolist()
        [2.0, 0.0, 0.0]
    """
    s = np.sort(u)[::-1]
    excess = np.cumsum(s) - total
    rho = np.nonzero(s * np.arange(1, u.size + 1) > excess)[0][-1]
    return np.maximum(u - excess[rho] / (rho + 1), 0.0)


def _optimality_gap(system: np.ndarray, rhs: np.ndarray, x: np.ndarray, total: float) -> float:
    """Frank-Wolfe gap of :math:`f(x) = \\tfrac12 \\lVert S x - t \\rVert^2` at ``x`` on the scaled simplex: an upper
    bound on :math:`f(x) - \\min f`."""
    grad = system.T @ (system @ x - rhs)
    return float(grad @ x - total * grad.min())


def _projected_gradient(system: np.ndarray, rhs: np.ndarray, total: float, start: np.ndarray) -> np.ndarray | None:
    """:math:`\\min \\lVert S x - t \\rVert` on the scaled simplex by accelerated projected gradient (FISTA), from
    ``start``; the solution once its optimality gap is below :data:`_GAP_TOLERANCE`, None if that takes more than
    :data:`_MAX_ITERATIONS` steps (an ill-conditioned system)."""
    v = np.ones(system.shape[1])
    for _ in range(30):  # power iteration for the Lipschitz constant ||S||^2
        v = system.T @ (system @ v)
        v /= np.linalg.norm(v)
    lipschitz = 1.05 * float(np.linalg.norm(system.T @ (system @ v)))
    x = project_to_simplex(start, total)
    z, momentum = x.copy(), 1.0
    for step in range(1, _MAX_ITERATIONS + 1):
        x_next = project_to_simplex(z - system.T @ (system @ z - rhs) / lipschitz, total)
        momentum_next = (1.0 + np.sqrt(1.0 + 4.0 * momentum**2)) / 2.0
        z = x_next + ((momentum - 1.0) / momentum_next) * (x_next - x)
        x, momentum = x_next, momentum_next
        if step % 5 == 0 and _optimality_gap(system, rhs, x, total) <= _GAP_TOLERANCE:
            return x
    return None


def nonnegative_counts(probs: torch.Tensor, grad_bias: torch.Tensor, batch_size: int) -> tuple[np.ndarray, dict]:
    """Counts :math:`n \\ge 0` with :math:`\\sum n = K` that best explain :math:`K \\nabla b = \\sum_j n_j (q_j - e_j)`.

    1. The minimum-norm least-squares solution of iLRG's system (:func:`label_restore.linsolve.solve_count_system`;
       for a generic :math:`Q` it meets :math:`\\sum n = K` exactly). If it is non-negative it is the answer.
    2. Else :math:`\\min \\lVert (Q^\\top - I) n - K \\nabla b \\rVert` over :math:`\\{n \\ge 0, \\sum n = K\\}`:
       accelerated projected gradient from step 1's solution until the optimality gap is below
       :data:`_GAP_TOLERANCE` squared samples (~6 ms at :math:`C = 1000`, agreeing with Lawson-Hanson to
       1e-10); if it does not get there, Lawson-Hanson (``scipy.optimize.nnls``, ~70 ms at :math:`C = 1000`)
       with the sum row weighted by :data:`_SUM_ROW_WEIGHT`.

    Args:
        probs: :math:`(C, C)` float64, row :math:`j` = :math:`q_j`.
        grad_bias: :math:`\\nabla b`, shape :math:`(C,)`.
        batch_size: :math:`K`.

    Returns:
        ``(n, info)``: float counts :math:`(C,)` and ``{"solver": "lstsq" | "projected-gradient" | "nnls",
        "residual": the residual of iLRG's system in samples}``.
    """
    float_counts, info = solve_count_system(probs, grad_bias, batch_size)
    if float_counts.min() >= 0.0:
        return float_counts, {"solver": "lstsq", "residual": info["residual"]}
    a, y = count_system(probs, grad_bias, batch_size)
    system, rhs = a[1:], y[1:]
    solution, solver = _projected_gradient(system, rhs, float(batch_size), float_counts), "projected-gradient"
    if solution is None:
        a[0] *= _SUM_ROW_WEIGHT
        y[0] *= _SUM_ROW_WEIGHT
        from scipy.optimize import nnls  # here, not at import: scipy.optimize takes ~0.4 s to load

        solution, solver = nnls(a, y, maxiter=50 * a.shape[1])[0], "nnls"
    residual = float(np.hypot(np.linalg.norm(system @ solution - rhs), solution.sum() - batch_size))
    return solution, {"solver": solver, "residual": residual}


@restoration_method("aux", requires=("grad_bias",))
def aux(
    inputs: LayerInputs,
    *,
    aux_probs: Any = None,
    aux_labels: Any = None,
    missing_classes: str = "error",
    aux_weights: Any = None,
) -> RestorationResult:
    """Label restoration from the bias gradient with class-conditional softmax means of auxiliary data.

    See the module docstring for the equations and the threat model (the server owns labelled data from the
    clients' distribution, disjoint from the client's batch).

    Args (public call): ``grad_bias`` :math:`(C,)` (required; ``grad_weight``, ``weight`` and ``bias`` are
    accepted for the shared signature and not read) and ``batch_size`` :math:`K`.

    Options:
        aux_probs: the model's softmax outputs on the auxiliary data, :math:`(N, C)`; for a FedAvg update
            :math:`(T, N, C)` at T models of a simulated local trajectory (averaged over T).
        aux_labels: the auxiliary samples' labels, :math:`(N,)` int, in :math:`[0, C)`.
        missing_classes: ``"error"`` (default: a class without auxiliary samples is refused) or
            ``"overall_mean"`` (its estimate is the mean softmax of all auxiliary samples; the classes are
            recorded in ``details["missing_classes"]``).
        aux_weights: :math:`(N,)` weights of the auxiliary samples in the class means (a simulated FedAvg
            client's visits count as much as their step does in its pseudo-gradient); None: all 1.

    Returns:
        :class:`RestorationResult` with ``details = {"float_counts", "solver", "residual", "aux_samples",
        "aux_per_class_min", "trajectory_models", "missing_classes"}``.

    Example:
        A model that is unsure of everything (every softmax :math:`(0.5, 0.5)`) and a batch of two samples of
        class 0 and one of class 1, so :math:`\\nabla b = (0.5, 0.5) - (2, 1) / 3`:

        >>> r = aux(grad_bias=[-1 / 6, 1 / 6], batch_size=3, aux_probs=[[0.5, 0.5], [0.5, 0.5]], aux_labels=[0, 1])
        >>> r.counts.tolist()
        [2, 1]
    """
    c, k = inputs.num_classes, inputs.batch_size
    probs, per_class, missing = class_conditional_probabilities(aux_probs, aux_labels, c, missing_classes, aux_weights)
    trajectory = int(np.shape(aux_probs)[0]) if np.ndim(aux_probs) == 3 else 1
    grad_bias = inputs.required("grad_bias")
    float_counts, info = nonnegative_counts(probs, grad_bias, k)
    raw = round_counts(float_counts, k)
    start = round_counts(float_counts, k, clip=True)
    counts = correct_to_sum(start, float_counts, k)
    # The count system's residual measures how far the batch's class means are from the auxiliary ones (it
    # grows like sqrt(K) times the within-class spread of the softmax), not whether the gradient is one of K
    # samples, so it is reported in details but not checked; the NNLS counts sum to K by construction.
    findings = bias_gradient_findings(grad_bias.double().numpy(), k)
    details = {
        "float_counts": float_counts,
        **info,
        "aux_samples": int(per_class.sum()),
        "aux_per_class_min": int(per_class.min()),
        "trajectory_models": trajectory,
        "missing_classes": missing,
    }
    return make_result("aux", counts, raw, start > 0, k, details=details, diagnostics=findings)
