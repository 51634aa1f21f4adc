r"""Disaggregation: the batch's samples, exactly, from the gradients of the model's linear layers.

For a linear layer :math:`u = W a + b` and the mean cross-entropy over K samples, the shared gradient is

.. math:: G = [\nabla W, \nabla b] = \frac1K \sum_{k=1}^{K} \delta_k\, \tilde a_k^\top,
   \qquad \tilde a_k = [a_k; 1], \quad \delta_k = \partial \ell_k / \partial u_k,

a matrix of rank K (at most): its row space is spanned by the K inputs :math:`\tilde a_k`, its column space by
the K output gradients :math:`\delta_k`. The inputs of a model's first linear layer are nonnegative after an affine
map and sparse: the pixels :math:`x - \ell \ge 0` above their lower bound :math:`\ell` for a layer on the image
(most MNIST pixels sit on it), or post-ReLU features for a layer after convolutions. Each sample is then a sparse
vertex of the polytope :math:`\{v \in \text{row}(G) : v_{D+1} = 1,\ v \text{ nonnegative}\}`, found by a
linear program (the ER-SpUD programme of Spielman, Wang and Wright, 2012: the nonnegative vector of least
weighted ink with ink 1 at one chosen coordinate), as R-GAP, the Cocktail Party Attack and SPEAR (Dimitrov et al.,
NeurIPS 2024) exploit the same low-rank structure.

**Verification.** A vertex may mix samples. A candidate :math:`a` is run through the rest of the model in float64
with every label c; it is a sample of the batch when, for the label that explains it best, every later linear
layer's input lies in that layer's row space and every linear layer's output gradient lies in its column space
(relative residuals below ``tolerance``). A mixture of samples fails both: its ReLU pattern is no sample's.
This also gives the sample's label (the issue's "which label explains its gradient").

**Peeling.** A verified sample's exact per-sample gradient :math:`\delta_l \tilde a_l^\top / K` is subtracted
from every linear layer; the residual is the gradient of the remaining samples (rank one lower), whose polytope
has fewer spurious vertices; the search repeats on it. It stops when the first layer's residual is at its float
noise floor (the remaining samples, e.g. those a trained model classifies with a loss under ~1e-6, left no trace
above float32 rounding) or a round verifies nothing.

**FedAvg.** Over one local epoch every sample is used once, by the local step whose mini-batch holds it, at the
weights :math:`\theta_s` that step starts from: the pseudo-gradient (the delta as a gradient,
:meth:`~inversion.fl.update.SharedUpdate.pseudo_gradients`) is a sum of K per-sample gradients, each at its own
step's weights. Its first layer's rows still lie in span([x_k, 1]), so the programmes run unchanged, and every
layer's still has rank K. A candidate is verified as above at the weights of each local step still open, obtained
by replaying the client's public schedule (torch SGD, momentum, weight decay) on the samples verified so far
(:class:`_Replay`); the step that explains it is its mini-batch, so a shuffled epoch needs no order. Peeling is the
replay: the residual is the pseudo-gradient less the replay's. A sample verifies only once the samples of the
steps before it have (their gradients set the weights it was taken at), or were too faint to move them; the
candidates that failed are offered again after each round, and no candidate verifies above
:data:`LOOSEST_LOCAL` (at another step's weights a sample looks like a faint one). The delta is rounded to float32
at the weights' scale, not its own: its noise floor is about :math:`\epsilon_{32} |\theta| / (\eta S)` in
gradient units (on trained FCN-3, 50 and 500 times FedSGD's at :math:`\eta` = 0.1 and 0.01), and fainter samples
sink below it. Several local epochs (each sample's gradient at several weights) and a first linear layer on
features (whose inputs the server cannot replay) are refused.

**DP-SGD.** With the client's clipping norm C in ``meta.notes["dp"]`` (public), each verified sample is peeled
with its clipping factor :math:`\min(1, C / \|g_k\|)`. Gaussian noise of :math:`\sigma C / K` per entry fills
every direction of every layer; the noise floor (the (K+1)-th singular value) rises with it, and the samples whose
gradients fall under it are lost (a trained model's are mostly far below C: at epoch 5 of FCN-3 the median
sample's norm is 0.17 and one in ten is under 4e-3, against the usual C = 1).

:func:`disaggregate` runs it on a :class:`~inversion.fl.update.SharedUpdate` and the server's model.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linprog
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from inversion.attack.span import first_linear_weight
from inversion.fl.update import SharedUpdate
from inversion.utils.errors import InputError

__all__ = [
    "NOISE_FLOOR",
    "STOPS",
    "TOLERANCE",
    "Disaggregation",
    "LinearLayer",
    "disaggregate",
    "layer_residuals",
    "linear_layers",
    "vertex_candidates",
]

NOISE_FLOOR = 1e-7
"""Singular values below this times a layer gradient's largest are taken as rounding, whatever else is measured."""

RANK_MARGIN = 10.0
"""A direction of a layer gradient counts as a sample's when its singular value exceeds this many times the layer's
noise level, its (K+1)-th singular value (the gradient of K samples has rank K at most; what lies beyond is the
client's float32 rounding, or DP noise)."""

SLACK = 300.0
"""A sample of strength s (its contribution's norm to the first layer's gradient) is measured to a relative
precision of about (noise level) / s; its verification residual may be SLACK times that (up to :data:`LOOSEST`)."""

LOOSEST = 3e-2
"""No candidate verifies with a residual above this (faint samples of a trained FCN-3, their images within 1e-3,
measured up to 1.6e-2; mixtures of two samples from 1e-1 up, except near-pure ones, whose label is the main
sample's)."""

LOOSEST_LOCAL = 3e-3
"""For a FedAvg delta of several local steps: no candidate verifies with a residual above this. True samples of a
trained FCN-3 (K = 24, B = 6, learning rate 0.1) measured from 1.2e-3 up at another step's weights (19 in 20 above
1e-2), from 2e-7 up at their own; with :data:`LOOSEST`, samples whose own step's weights were not known yet
verified at the first step's. At learning rate 0.01 the steps differ by less (from 3e-4 up), and so does a sample
put in a neighbouring step."""

SHORTFALL = 0.1
"""A later layer verifies candidates while its gradient's rank falls short of the first layer's by at most this share
of it. A sample whose output gradient at that layer is faint or shared has its input outside that layer's row space
and fails there (a sample missed, never a mixture accepted); with a larger shortfall the layer is left out."""

CLARITY = 0.1
"""A candidate verifies only when its best label's residual is below this share of the next best label's."""

TOLERANCE = 3e-4
"""A candidate verifies when its worst relative row- or column-space residual (:func:`layer_residuals`) is below
this: true samples measured up to 4e-4 on trained FCN-3 checkpoints, mixtures of two samples from 1e-3 up."""

PIXEL_STRONG = 0.05
"""Coordinates whose column in the nonnegative map is below this fraction of the largest one are never the LP's
unit coordinate (their ink is close to the noise)."""

DUPLICATE = 1e-2
"""Two candidates of a round closer than this (relative) are one sample: the second is dropped."""


PROGRAMMES_PER_SAMPLE = 8
"""The default budget of linear programmes, per sample of the batch (K = 64 on trained FCN-3: 50 of 64 verified
in 406 programmes, 26 in 256)."""

LP_SLACK = 1e-4
"""The programmes' nonnegativity holds to this share of the strongest coordinate's ink: a subspace measured from
float32 gradients puts the zero pixels of a faint sample slightly below zero (polishing then makes it exact)."""

ROUND_BUDGET = 2
"""A round solves at most this many programmes per remaining sample (plus 2) before the verified samples are peeled
off and the search restarts on the rest."""

BASIN = 0.5
"""After a programme, the coordinates where its solution has more than this share of its largest ink are not tried
again (a programme from them lands on the same vertex)."""

POLISH = (3e-3, 1e-2, 3e-2)
"""Levels (shares of the largest ink) under which an LP solution's coordinates are taken as exactly empty, tried in
turn when the solution itself does not verify (:func:`_polished`)."""
"""Weight of the ink of samples found in a round on the LP's objective: later programmes avoid them."""


STOPS = {
    "all": "all K samples verified",
    "trained": "every sample the local steps trained on verified (a partial local epoch: the others left no trace)",
    "noise": "the rest of the first layer's gradient is at its noise floor (those samples left no trace above it)",
    "room": "no linear layer after the first holds every remaining sample in its gradient (its rank is lower), so "
    "none can verify them",
    "nothing": "a round of linear programmes verified no sample",
    "budget": "the budget of linear programmes was spent",
    "saturated": "the first layer's gradient has full rank: it cannot hold more samples than its outputs, and noise "
    "that fills every direction hides them",
}
"""Why :func:`disaggregate` stopped (:attr:`Disaggregation.stopped`)."""


@dataclass(frozen=True)
class LinearLayer:
    """A linear layer of the model whose gradients the update holds.

    Attributes:
        module: the ``nn.Linear``.
        weight: the name of its weight in ``model.named_parameters()``.
        bias: the name of its bias, or None when it has none.
    """

    module: nn.Linear
    weight: str
    bias: str | None


def linear_layers(model: nn.Module, image_shape: Sequence[int]) -> list[LinearLayer]:
    """The model's ``nn.Linear`` layers in the order a forward pass calls them (found with one probe pass in eval
    mode, without gradients).

    Raises:
        ValueError: the model has no linear layer, or calls one twice (a shared layer has no single input).
    """
    order: list[nn.Linear] = []
    handles = [
        m.register_forward_pre_hook(lambda module, _inputs: order.append(module))
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            parameter = next(model.parameters())
            model(torch.zeros(2, *image_shape, dtype=parameter.dtype, device=parameter.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not order:
        raise InputError(f"{type(model).__name__} has no linear layer: disaggregation reads linear layers' gradients")
    if len(set(map(id, order))) != len(order):
        raise InputError("the model calls one linear layer twice: disaggregation needs one input per layer and sample")
    names = {id(p): n for n, p in model.named_parameters()}
    return [LinearLayer(m, names[id(m.weight)], None if m.bias is None else names[id(m.bias)]) for m in order]


def _stacked(gradients: dict[str, Tensor], layer: LinearLayer) -> np.ndarray:
    """:math:`G = [\\nabla W, \\nabla b]`, float64, (out, in + 1) (no bias column without a bias)."""
    weight = gradients[layer.weight].detach().cpu().double().numpy()
    if layer.bias is None:
        return weight
    return np.concatenate([weight, gradients[layer.bias].detach().cpu().double().numpy()[:, None]], axis=1)


@dataclass
class _Subspaces:
    """Rank-r bases of one layer's (residual) gradient: columns U (out, r), rows V (in+1, r)."""

    left: np.ndarray
    right: np.ndarray

    @property
    def rank(self) -> int:
        return self.right.shape[1]


def _subspaces(matrix: np.ndarray, floor: float, max_rank: int) -> _Subspaces:
    """The singular subspaces of ``matrix`` whose singular values exceed ``floor`` (at most ``max_rank``)."""
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    rank = int(min(max_rank, (s > floor).sum()))
    return _Subspaces(u[:, :rank], vh[:rank].T)


def _relative_residual(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Per row of ``vectors`` (n, d): its distance to the span of ``basis``'s columns (d, r), relative to its norm
    (0 for a zero vector)."""
    rest = vectors - (vectors @ basis) @ basis.T
    norms = np.linalg.norm(vectors, axis=1)
    return np.where(norms > 0, np.linalg.norm(rest, axis=1) / np.where(norms > 0, norms, 1.0), 0.0)


class _Tail:
    """The model from its first linear layer on, in float64: per candidate input and label, every linear layer's
    input (with the bias coordinate) and output gradient of that sample's cross-entropy."""

    def __init__(self, model: nn.Module, layers: list[LinearLayer], image_shape: Sequence[int]) -> None:
        self.model = copy.deepcopy(model).double().cpu()
        self.model.eval()  # no batch-norm (refused) or dropout: eval computes what the client computed
        by_name = dict(self.model.named_modules())
        self.layers = [by_name[layer.weight.rpartition(".")[0]] for layer in layers]  # by name: any copy of model
        self.has_bias = [layer.bias is not None for layer in layers]
        self.parameters = dict(self.model.named_parameters())
        self.image_shape = tuple(image_shape)

    def __call__(self, inputs: np.ndarray, labels: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Inputs (n, in+1 or in) and output gradients (n, out) of every linear layer, for first-layer inputs
        ``inputs`` (n, in) and labels (n,)."""
        first = torch.as_tensor(inputs, dtype=torch.float64)
        seen: list[Tensor] = []
        outputs: list[Tensor] = []

        def replace(_module: nn.Module, _args: tuple) -> tuple:
            return (first,)

        def record(_module: nn.Module, args: tuple, output: Tensor) -> None:
            seen.append(args[0])
            output.retain_grad()
            outputs.append(output)

        handles = [self.layers[0].register_forward_pre_hook(replace)]
        handles += [layer.register_forward_hook(record) for layer in self.layers]
        try:
            logits = self.model(torch.zeros(len(first), *self.image_shape, dtype=torch.float64))
            loss = nn.functional.cross_entropy(logits, torch.as_tensor(labels, dtype=torch.long), reduction="sum")
            loss.backward()
        finally:
            for handle in handles:
                handle.remove()
        ins: list[np.ndarray] = []
        for seen_input, bias in zip(seen, self.has_bias, strict=True):
            flat = seen_input.detach().reshape(len(first), -1).numpy()
            ins.append(np.concatenate([flat, np.ones((len(flat), 1))], axis=1) if bias else flat)
        grads = [o.grad.detach().reshape(len(first), -1).numpy() for o in outputs if o.grad is not None]
        return ins, grads


def layer_residuals(
    inputs: list[np.ndarray], grads: list[np.ndarray], spaces: list[_Subspaces], informative: list[bool]
) -> np.ndarray:
    """The worst relative residual per candidate: of every informative layer's input to that layer's row space, and
    of every layer's output gradient to its column space (the first layer's input is in its row space by
    construction and adds nothing); shape (n,)."""
    worst = np.zeros(len(inputs[0]))
    for index, (a, d, space, useful) in enumerate(zip(inputs, grads, spaces, informative, strict=True)):
        if not useful:
            continue
        if index > 0:
            worst = np.maximum(worst, _relative_residual(a, space.right))
        worst = np.maximum(worst, _relative_residual(d, space.left))
    return worst


def vertex_candidates(
    right: np.ndarray,
    lower: np.ndarray,
    *,
    budget: int,
    accept: Callable[[np.ndarray], bool],
    wanted: int,
    known: Sequence[np.ndarray] = (),
) -> tuple[list[np.ndarray], int]:
    r"""Sparse nonnegative vectors of a row space, one linear programme each, kept when ``accept`` says so.

    With :math:`V` (d+1, r) an orthonormal basis of the row space (the last coordinate the bias's 1) and the
    nonnegative map :math:`p(v) = v_{1..d} - \ell\, v_{d+1} \ge 0`, each programme picks a coordinate i with much
    ink not yet explained and solves

    .. math:: \min_q\ \mathbf 1^\top p(Vq) \quad \text{s.t.}\quad p(Vq) \ge -\epsilon,\ p(Vq)_i = 1

    The solution, or the exact vertex near it
    (:func:`_polished`), rescaled to bias coordinate 1, is a candidate. The coordinates where it has much ink are
    not tried again (:data:`BASIN`), and the next coordinate is the strongest one the accepted candidates explain
    least.

    Args:
        right: V, (d+1, r) orthonormal columns.
        lower: :math:`\ell`, (d,): the lower bound of each coordinate (0 for features).
        budget: the most programmes to solve.
        accept: ``accept(v) -> bool`` for a candidate v (d+1,) with v[-1] = 1.
        wanted: stop after accepting this many.
        known: candidates (each (d+1,), bias coordinate 1) accepted before: none is accepted again, and their
            ink counts as explained.

    Returns:
        the candidates accepted here (each (d+1,)), and the number of programmes solved.
    """
    ink_map = right[:-1].T - np.outer(right[-1], lower)  # (r, d): p(Vq) = q @ ink_map
    strength = np.linalg.norm(ink_map, axis=0)
    if strength.max() == 0:
        return [], 0
    usable = strength > PIXEL_STRONG * strength.max()
    epsilon = LP_SLACK * strength.max()
    constraints = -ink_map.T
    explained = np.zeros(ink_map.shape[1])
    for v in known:
        ink = np.maximum(v[:-1] - lower * v[-1], 0.0)
        explained += ink / max(ink.max(), 1e-300)
    tried = np.zeros(ink_map.shape[1], dtype=bool)
    accepted: list[np.ndarray] = list(known)
    solved = 0
    while solved < budget and len(accepted) - len(known) < wanted:
        share = explained / explained.max() if explained.max() > 0 else explained
        score = np.where(usable & ~tried, strength * (1.0 - np.minimum(share, 1.0)) + 1e-12 * strength, -1.0)
        i = int(score.argmax())
        if score[i] < 0:
            break
        tried[i] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            solution = linprog(
                ink_map.sum(axis=1),
                A_ub=constraints,
                b_ub=np.full(constraints.shape[0], epsilon),
                A_eq=ink_map[:, i][None],
                b_eq=[1.0],
                bounds=(None, None),
                method="highs",
            )
        solved += 1
        if solution.status != 0:
            continue
        ink = np.maximum(solution.x @ ink_map, 0.0)
        if ink.max() <= 0:
            continue
        tried |= ink > BASIN * ink.max()  # programmes from these coordinates would find this vertex again
        polished = (_polished(solution.x, ink_map, right[-1], level) for level in POLISH)
        if any(_offer(right, q, accept, accepted) for q in (*polished, solution.x)):
            explained += ink / ink.max()
    return accepted[len(known) :], solved


def _offer(right: np.ndarray, q: np.ndarray | None, accept: Callable[[np.ndarray], bool], accepted: list) -> bool:
    """Whether coefficients q (r,) give a new candidate (bias coordinate 1, not within :data:`DUPLICATE` of one
    in ``accepted``) that ``accept`` takes; it is then appended to ``accepted``."""
    if q is None or right[-1] @ q <= 0:
        return False
    v = right @ q / (right[-1] @ q)
    if any(np.linalg.norm(v - a) <= DUPLICATE * np.linalg.norm(v) for a in accepted) or not accept(v):
        return False
    accepted.append(v)
    return True


def _polished(q: np.ndarray, ink_map: np.ndarray, bias_row: np.ndarray, level: float) -> np.ndarray | None:
    """The exact vertex near an LP solution q (r,): the coefficients whose ink vanishes on every coordinate where
    q's ink is below ``level`` times its largest, as the eigenvector of the least eigenvalue of those equations'
    normal matrix; None when that null direction is not clear (the least eigenvalue not 100 times below the next)
    or misses the bias."""
    ink = q @ ink_map
    system = ink_map[:, ink < level * ink.max()]
    if system.shape[1] < len(q) - 1:
        return None
    values, vectors = np.linalg.eigh(system @ system.T)
    if len(values) > 1 and values[0] * 100 > values[1]:
        return None
    direction = vectors[:, 0]
    bias = bias_row @ direction
    return None if abs(bias) < 1e-12 else direction / bias


class _Verifier:
    """The ``accept`` of one round of :func:`vertex_candidates`: a candidate (d+1,) with bias coordinate 1 verifies
    when, at one of the steps still open and for the label that explains it best there, its worst residual
    (:func:`layer_residuals`) is below the tolerance its strength allows (:data:`SLACK`, :data:`LOOSEST`, or
    :data:`LOOSEST_LOCAL` with several steps); the verified ones are kept with their labels and steps.

    A FedSGD gradient has one step (the model's weights, each sample's share 1/K); a FedAvg delta has one per
    local step (:class:`_Replay`: the weights the client stepped from, each sample's share of the pseudo-gradient).

    Args:
        tails: per step, the model at that step's weights.
        divisors: per step, a sample's per-sample gradient over its share of the (pseudo-)gradient (K for FedSGD).
        free: per step, how many more samples it may take (decremented as candidates verify).
    """

    def __init__(
        self,
        tails: list[_Tail],
        divisors: list[float],
        free: list[int],
        spaces: list[_Subspaces],
        informative: list[bool],
        noise: float,
        tolerance: float,
    ) -> None:
        self.tails, self.divisors, self.free = tails, divisors, free
        self.loosest = LOOSEST if len(tails) == 1 else LOOSEST_LOCAL
        self.spaces, self.informative, self.noise, self.tolerance = spaces, informative, noise, tolerance
        self.points: list[np.ndarray] = []
        self.labels: list[int] = []
        self.steps: list[int] = []
        self.residuals: list[float] = []

    def __call__(self, v: np.ndarray) -> bool:
        point = v[:-1] if self.tails[0].has_bias[0] else v
        num_classes = self.tails[0].layers[-1].out_features
        best: tuple[int, np.ndarray, list[np.ndarray], list[np.ndarray]] | None = None
        seen: set[int] = set()
        for step, tail in enumerate(self.tails):
            if self.free[step] <= 0 or id(tail) in seen:
                continue  # full, or at the weights of an earlier open step (which then takes the sample)
            seen.add(id(tail))
            ins, grads = tail(np.repeat(point[None], num_classes, axis=0), np.arange(num_classes))
            scores = layer_residuals(ins, grads, self.spaces, self.informative)
            if best is None or scores.min() < best[1].min():
                best = (step, scores, ins, grads)
        if best is None:
            return False
        step, scores, ins, grads = best
        label = int(scores.argmin())
        strength = np.linalg.norm(grads[0][label]) * np.linalg.norm(ins[0][label]) / self.divisors[step]
        allowed = min(self.loosest, max(self.tolerance, SLACK * self.noise / max(strength, 1e-300)))
        runner_up = np.partition(scores, 1)[1] if len(scores) > 1 else np.inf
        if scores[label] >= allowed or scores[label] > CLARITY * runner_up:
            return False
        self.free[step] -= 1
        self.points.append(point)
        self.labels.append(label)
        self.steps.append(step)
        self.residuals.append(float(scores[label]))
        return True


class _Replay:
    r"""A FedAvg client's local training replayed in float64 on the samples verified so far, each in its step.

    Within one local epoch every sample is used once, by the step whose mini-batch holds it, at the weights
    :math:`\theta_s` that step starts from; the pseudo-gradient (:meth:`SharedUpdate.pseudo_gradients`) is then the
    sum of the K per-sample gradients :math:`\nabla \ell_k(\theta_{s(k)}) / \text{divisor}_s`, and each layer's
    has rank K, like a FedSGD gradient whose samples were each taken at their own step's weights. The replay runs
    the schedule's torch SGD (momentum, weight decay) with each step's verified samples; a sample not verified
    yet counts as a zero gradient in its step's mean (exact when it is faint, as the samples left unverified
    mostly are). The residual is the pseudo-gradient less the replay's, the gradient of the unverified samples
    (and, with weight decay, without its :math:`\lambda\theta` terms, which the replay holds even with no sample).

    The mini-batches' order never matters: a verified sample's step is the one whose weights explain it, so a
    shuffled epoch is replayed as well as an ordered one.
    """

    def __init__(
        self, update: SharedUpdate, model: nn.Module, layers: list[LinearLayer], image_shape: Sequence[int], k: int
    ) -> None:
        local = update.meta.local
        assert local is not None  # a FedAvg update
        self.local, self.layers, self.image_shape = local, layers, tuple(image_shape)
        self.model = copy.deepcopy(model).double().cpu()
        self.model.eval()
        self.sizes = [len(range(k)[local.rows(step, k)]) for step in range(local.steps)]
        weights = local.step_weights()
        total = float(weights.sum())
        self.divisors = [size * total / float(w) for size, w in zip(self.sizes, weights, strict=True)]
        self.scale = update.pseudo_gradient_scale
        self.delta = {name: tensor.detach().cpu().double() for name, tensor in update.gradients.items()}
        self.points: list[list[np.ndarray]] = [[] for _ in self.sizes]
        self.labels: list[list[int]] = [[] for _ in self.sizes]
        self.tails: list[_Tail] = []
        self.residual: list[np.ndarray] = []
        self._run()

    def add(self, points: np.ndarray, labels: Sequence[int], steps: Sequence[int]) -> None:
        """Put verified samples (n, d) with their labels and steps in their mini-batches, and replay again."""
        for point, label, step in zip(points, labels, steps, strict=True):
            self.points[step].append(point)
            self.labels[step].append(int(label))
        self._run()

    def free(self) -> list[int]:
        """Per step, the samples its mini-batch holds that are not verified yet."""
        return [size - len(points) for size, points in zip(self.sizes, self.points, strict=True)]

    def _run(self) -> None:
        """Replay: :attr:`tails` (the model at every step's starting weights) and :attr:`residual` (per linear
        layer, the stacked pseudo-gradient less the replay's)."""
        client = copy.deepcopy(self.model)
        named = [(n, p) for n, p in client.named_parameters() if p.requires_grad]
        start = {n: p.detach().clone() for n, p in named}
        optimizer = self.local.optimizer([p for _, p in named])
        self.tails = []
        for step, size in enumerate(self.sizes):
            same = step > 0 and all(torch.equal(p, self.tails[-1].parameters[n]) for n, p in named)
            self.tails.append(self.tails[-1] if same else _Tail(client, self.layers, self.image_shape))
            for _, p in named:
                p.grad = torch.zeros_like(p)  # a step without a verified sample still decays and carries momentum
            if self.points[step]:
                images = torch.as_tensor(np.stack(self.points[step])).reshape(-1, *self.image_shape)
                labels = torch.as_tensor(self.labels[step], dtype=torch.long)
                (nn.functional.cross_entropy(client(images), labels, reduction="sum") / size).backward()
            optimizer.step()
        explained = {n: self.delta[n] - (p.detach() - start[n]) for n, p in named if n in self.delta}
        rest = {n: self.scale * t for n, t in explained.items()}
        self.residual = [_stacked(rest, layer) for layer in self.layers]


class _Rejected:
    """Candidates (d+1,) that did not verify in a round, one per sample (:data:`DUPLICATE`), to offer again once
    the FedAvg replay has moved on (:class:`_Replay`: a sample of a later step verifies only when the samples of
    the steps before it have)."""

    def __init__(self) -> None:
        self.candidates: list[np.ndarray] = []

    def add(self, v: np.ndarray) -> None:
        if not any(np.linalg.norm(v - c) <= DUPLICATE * np.linalg.norm(v) for c in self.candidates):
            self.candidates.append(v)

    def take(self) -> list[np.ndarray]:
        """All of them, forgotten here (those that fail again come back through :class:`_Remembering`)."""
        taken, self.candidates = self.candidates, []
        return taken


class _Remembering:
    """``accept`` that asks a verifier and keeps the candidates it rejects in a :class:`_Rejected`."""

    def __init__(self, verifier: _Verifier, rejected: _Rejected) -> None:
        self.verifier, self.rejected = verifier, rejected

    def __call__(self, v: np.ndarray) -> bool:
        if self.verifier(v):
            return True
        self.rejected.add(v)
        return False


@dataclass
class Disaggregation:
    """What :func:`disaggregate` recovered.

    Attributes:
        inputs: (n, d) float64 inputs of the first linear layer of the n verified samples (flattened normalised
            images when that layer is applied to the image, else features), in the order found.
        labels: (n,) int64 their labels.
        residuals: (n,) float64 their verification residuals (:func:`layer_residuals`, below ``tolerance``).
        on_image: whether the first linear layer reads the flattened image (``inputs`` are then images).
        layer: the name of that layer's weight.
        batch_size: K.
        visible: the first layer's rank: how many samples rose above its float noise floor.
        remaining_gradient: the final layer's gradients of the samples not recovered, as the mean gradient of
            those ``batch_size - n`` samples: (grad_weight (C, M), grad_bias (C,) or None), float64; None when all
            K were recovered. For FedAvg, the pseudo-gradient less the replay's, scaled alike: each sample's
            gradient at the weights of its own local step (with momentum, weighted by its step's share).
        programmes: linear programmes solved; rounds: peeling rounds; seconds: wall time.
        stopped: why the search ended (one of :data:`STOPS`' sentences).
        steps: (n,) int64 the local step whose mini-batch held each verified sample (FedAvg; all 0 for FedSGD).
    """

    inputs: np.ndarray
    labels: np.ndarray
    residuals: np.ndarray
    on_image: bool
    layer: str
    batch_size: int
    visible: int
    remaining_gradient: tuple[np.ndarray, np.ndarray | None] | None
    programmes: int = 0
    rounds: int = 0
    seconds: float = 0.0
    stopped: str = ""
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def found(self) -> int:
        """n, the number of verified samples."""
        return len(self.labels)

    def images(self, image_shape: Sequence[int]) -> Tensor:
        """The verified samples as normalised images (n, C, H, W), float32; ValueError unless ``on_image``."""
        if not self.on_image:
            raise InputError(f"disaggregation recovered features of {self.layer!r}, not images")
        return torch.as_tensor(self.inputs, dtype=torch.float32).reshape(-1, *image_shape)


def _clipping(update: SharedUpdate) -> float | None:
    """The per-sample clipping norm C of a DP-SGD client (``meta.notes["dp"]``, public), or None."""
    dp = update.meta.notes.get("dp")
    clip = dp.get("max_grad_norm") if isinstance(dp, dict) else None
    return float(clip) if isinstance(clip, (int, float)) and math.isfinite(clip) else None


def _clip_factors(ins: list[np.ndarray], grads: list[np.ndarray], clip: float) -> np.ndarray:
    r"""Opacus's clipping factors :math:`\min(1, C / (\|g_k\| + 10^{-6}))` of n samples, from each linear layer's
    inputs (n, in+1) and output gradients (n, out): :math:`\|g_k\|^2 = \sum_l \|\delta_{lk}\|^2 \|a_{lk}\|^2`
    (exact when the linear layers hold every trainable parameter; else the factors are too large); shape (n,)."""
    squared = sum((d**2).sum(axis=1) * (a**2).sum(axis=1) for a, d in zip(ins, grads, strict=True))
    return np.minimum(1.0, clip / (np.sqrt(squared) + 1e-6))


def _lower_bound(
    update: SharedUpdate, model: nn.Module, layer: LinearLayer, image_shape: Sequence[int]
) -> tuple[np.ndarray, bool]:
    """Per input coordinate of the first linear layer, the bound its inputs never go below, and whether the layer
    reads the image: the normalised 0 pixel then (:meth:`UpdateMeta.bounds`), else 0 (features after a ReLU)."""
    found = first_linear_weight(model, image_shape)
    if found is None or found[0] != layer.weight:
        return np.zeros(layer.module.in_features), False
    lower = torch.as_tensor(update.meta.bounds()[0], dtype=torch.float64).reshape(-1, 1, 1)
    return lower.expand(*image_shape).reshape(-1).numpy().copy(), True


def disaggregate(
    update: SharedUpdate,
    model: nn.Module,
    *,
    batch_size: int | None = None,
    image_shape: Sequence[int] | None = None,
    tolerance: float = TOLERANCE,
    max_programmes: int | None = None,
) -> Disaggregation:
    """Recover the batch's samples from an update's linear-layer gradients (see the module docstring).

    Args:
        update: the shared update, holding the gradients (FedSGD) or weight deltas of at most one local epoch
            (FedAvg) of the model's linear layers.
        model: the server's model (no batch norm: per-sample gradients must not mix samples).
        batch_size: K when the update does not reveal it.
        image_shape: (C, H, W); default the update's ``meta.input_shape``.
        tolerance: the verification threshold (:data:`TOLERANCE`).
        max_programmes: the most linear programmes in all (default :data:`PROGRAMMES_PER_SAMPLE` K).

    Returns:
        the verified samples, their labels (and local steps), and the final layer's gradient of the rest.

    Raises:
        ValueError: the update lacks a linear layer's gradient, the model has batch norm, K is unknown, or a
            FedAvg update runs more than one local epoch or its first linear layer does not read the image.
    """
    with threadpool_limits(limits=1, user_api="blas"):  # numpy's BLAS threads spin while they wait for a core
        return _disaggregate(update, model, batch_size, image_shape, tolerance, max_programmes)


def _disaggregate(
    update: SharedUpdate,
    model: nn.Module,
    batch_size: int | None,
    image_shape: Sequence[int] | None,
    tolerance: float,
    max_programmes: int | None,
) -> Disaggregation:
    """:func:`disaggregate`'s search, with the BLAS threads it may use already limited."""
    start = time.perf_counter()
    k = update.batch_size if update.batch_size is not None else batch_size
    if k is None:
        raise InputError("the update does not reveal the batch size K; pass batch_size (your guess of K)")
    k = int(k)
    local = update.meta.local
    if local is not None and local.steps > local.batches_per_epoch(k):
        raise InputError(
            f"disaggregation reads FedAvg updates of at most one local epoch (each sample's gradient once); this "
            f"one runs {local.steps} steps over {local.batches_per_epoch(k)} mini-batches of K={k}"
        )
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise InputError("disaggregation needs per-sample gradients; batch norm mixes the samples of a batch")
    shape = tuple(image_shape if image_shape is not None else update.meta.input_shape or ())
    if not shape:
        raise InputError("the update does not record its input shape; pass image_shape=(C, H, W)")
    layers = linear_layers(model, shape)
    missing = [name for layer in layers for name in (layer.weight, layer.bias) if name and name not in update.gradients]
    if missing:
        raise InputError(f"the update holds no gradient of {missing[0]!r}: disaggregation reads every linear layer")
    lower, on_image = _lower_bound(update, model, layers[0], shape)
    if local is not None and not on_image:
        raise InputError(
            f"disaggregation replays FedAvg's local steps from the recovered images, but {layers[0].weight!r} reads "
            "features, not the image: use a FedSGD update"
        )
    replay = None if local is None else _Replay(update, model, layers, shape, k)
    clip = _clipping(update)
    if replay is None:
        gradients = update.pseudo_gradients()
        residual = [_stacked(gradients, layer) for layer in layers]
        trained = k
    else:
        residual = list(replay.residual)
        trained = sum(replay.sizes)  # a partial local epoch leaves the last samples untrained
    spectra = [np.linalg.svd(g, compute_uv=False) for g in residual]
    noise = [float(s[trained]) if len(s) > trained else 0.0 for s in spectra]  # rank <= K: beyond is rounding
    floors = [max(NOISE_FLOOR * float(s[0]), RANK_MARGIN * n) for s, n in zip(spectra, noise, strict=True)]
    tail = _Tail(model, layers, shape)
    budget = PROGRAMMES_PER_SAMPLE * k if max_programmes is None else int(max_programmes)

    found_inputs: list[np.ndarray] = []
    found_labels: list[int] = []
    found_steps: list[int] = []
    found_residuals: list[float] = []
    rejected = _Rejected()
    programmes = rounds = 0
    visible = None
    stopped = STOPS["budget"]
    while programmes < budget:
        left = trained - len(found_labels)
        if left == 0:
            stopped = STOPS["all"] if trained == k else STOPS["trained"]
            break
        spaces = [_subspaces(g, f, left) for g, f in zip(residual, floors, strict=True)]
        if visible is None:
            visible = spaces[0].rank
        if spaces[0].rank == 0:
            stopped = STOPS["noise"]
            break
        if spaces[0].rank >= min(residual[0].shape) - 1:
            stopped = STOPS["saturated"]
            break
        informative = [space.rank >= spaces[0].rank - int(SHORTFALL * spaces[0].rank) for space in spaces]
        if not any(informative[1:]):
            stopped = STOPS["room"]
            break
        informative[0] = True
        known: list[np.ndarray] = []
        if replay is None:
            verifier = _Verifier([tail], [k], [left], spaces, informative, noise[0], tolerance)
            accept: Callable[[np.ndarray], bool] = verifier
        else:
            verifier = _Verifier(replay.tails, replay.divisors, replay.free(), spaces, informative, noise[0], tolerance)
            accept = _Remembering(verifier, rejected)
            for v in rejected.take():  # the replay moved on: candidates of later steps may verify now
                _offer(spaces[0].right, spaces[0].right.T @ v, accept, known)
        accepted, solved = vertex_candidates(
            spaces[0].right,
            lower,
            budget=min(budget - programmes, ROUND_BUDGET * spaces[0].rank + 2),
            accept=accept,
            wanted=spaces[0].rank - len(known),
            known=known,
        )
        accepted = known + accepted
        programmes += solved
        rounds += 1
        if not accepted:
            stopped = STOPS["nothing"] if programmes < budget else STOPS["budget"]
            break
        points, labels = np.stack(verifier.points), np.asarray(verifier.labels)
        if replay is None:
            ins, grads = tail(points, labels)
            if clip is not None:  # DP-SGD: each sample's gradient was clipped before the mean
                factors = _clip_factors(ins, grads, clip)[:, None]
                grads = [d * factors for d in grads]
            for index, (a, d) in enumerate(zip(ins, grads, strict=True)):
                residual[index] = residual[index] - d.T @ a / k  # peel: the rest is the others' gradient
        else:
            replay.add(points, verifier.labels, verifier.steps)  # replay with them: the rest is the others' gradient
            residual = list(replay.residual)
        found_inputs += list(points)
        found_labels += verifier.labels
        found_steps += verifier.steps
        found_residuals += verifier.residuals
    remaining = None
    if len(found_labels) < k:
        final = residual[-1] * (k / (k - len(found_labels)))
        remaining = (final[:, :-1], final[:, -1]) if layers[-1].bias is not None else (final, None)
    return Disaggregation(
        inputs=np.stack(found_inputs) if found_inputs else np.zeros((0, layers[0].module.in_features)),
        labels=np.asarray(found_labels, dtype=np.int64),
        residuals=np.asarray(found_residuals),
        on_image=on_image,
        layer=layers[0].weight,
        batch_size=k,
        visible=int(visible or 0),
        remaining_gradient=remaining,
        programmes=programmes,
        rounds=rounds,
        seconds=time.perf_counter() - start,
        stopped=stopped,
        steps=np.asarray(found_steps, dtype=np.int64),
    )
