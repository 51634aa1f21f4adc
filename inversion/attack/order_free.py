"""Attacking FedAvg clients whose local mini-batches the server cannot place (Dimitrov et al., TMLR 2022).

A client that reshuffles its K samples every local epoch (``LocalTraining.shuffle``) puts them into its
mini-batches in a private order; restored labels say how many samples each class has, not which mini-batch
holds them. An attack that lays dummies and labels into the mini-batches in a fixed order (``in_order``)
then asks the unrolled local training for batches the client never formed. The order-free layout
(:class:`LocalLayout`, ``local_order=free``) assumes no order:

- **which mini-batch holds which sample** is optimised jointly with the images: each dummy keeps its label
  (the multiset of the label plan), and every :data:`REORDER_EVERY` steps a search reassigns the dummies to
  the mini-batches (:meth:`AttackProblem.reorder <inversion.attack.problem.AttackProblem.reorder>`). It
  reads the final layer's bias change, where the mini-batches' label counts show: the bias change is
  :math:`-\\eta \\sum_s w_s \\frac{1}{|b_s|} \\sum_{k \\in b_s} (p_k^{(s)} - y_k)` plus weight decay, the momentum
  weights :math:`w_s` telling the steps apart. With the softmax :math:`p_k^{(s)}` of every dummy at every
  step's weights (from one unrolled pass) the change is linear in the assignment, so simulated annealing
  (:meth:`LocalLayout.anneal`) searches it in milliseconds, and the unrolled bias change decides whether the
  found assignment replaces the current one;
- **several local epochs**: each epoch has its own K dummies in its own (unknown) order; an order-invariant
  term pulls the epochs' sets together: each epoch's dummies are matched to the first epoch's by the
  Hungarian algorithm, and their squared distance to the matched mean is penalised
  (:func:`epoch_disagreement`). The reconstruction is that matched mean (:func:`epoch_consensus`).

With known orders (an evaluation oracle that reads the client's private draw) the dummies take those
orders and the plan's labels in the client's sample order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from inversion.fl.local import LocalTraining
from inversion.utils.errors import InputError

__all__ = [
    "ANNEAL_MOVES",
    "ANNEAL_STARTS",
    "LOCAL_ORDERS",
    "REORDER_EVERY",
    "REORDER_ROUNDS",
    "LocalLayout",
    "align_epochs",
    "epoch_consensus",
    "epoch_disagreement",
]

LOCAL_ORDERS = ("auto", "free", "in_order", "oracle")
"""How the attack lays the dummies into a FedAvg client's local mini-batches: ``in_order`` (the dummies and
their labels in the client's mini-batches in the given order, every epoch), ``free`` (no order assumed, see
the module docstring), ``auto`` (``free`` for a shuffling client, else ``in_order``), ``oracle`` (the client's
private orders, handed over by an evaluation: an upper bound, not an attack)."""

REORDER_EVERY = 50
"""Steps between two searches of the order-free layout's mini-batch assignment (``AttackProblem.reorder``), over the
first quarter of the attack's steps, before its learning rate decays (the rest refines the images in the grouping
found)."""
ANNEAL_MOVES = 2000
"""Moves per dummy from each start of one annealing search (:meth:`LocalLayout.anneal`)."""
ANNEAL_STARTS = 4
"""Starts of one annealing search: the current assignment and random ones."""
REORDER_ROUNDS = 4
"""At most this many annealing searches per reorder, each on the trajectory of the previous one's assignment."""


def _hungarian(cost: Tensor) -> Tensor:
    """The column assigned to each row (K,) int64 of the minimum-cost matching of a (K, K) cost."""
    from scipy.optimize import linear_sum_assignment  # here, not at import: scipy.optimize takes ~0.4 s

    _, columns = linear_sum_assignment(cost.detach().double().cpu().numpy())
    return torch.as_tensor(columns, dtype=torch.int64)


def align_epochs(dummies: Tensor) -> Tensor:
    """Each epoch's dummies matched to the first epoch's (Hungarian on squared distances).

    Args:
        dummies: (E, K, ...) one set of K dummies per epoch.

    Returns:
        (E, K) int64: ``dummies[e, perms[e, k]]`` is the dummy of epoch ``e`` matched to ``dummies[0, k]``
        (``perms[0]`` is the identity).
    """
    flat = dummies.detach().flatten(2)
    perms = [torch.arange(flat.shape[1])]
    for epoch in flat[1:]:
        perms.append(_hungarian(torch.cdist(flat[0].double(), epoch.double()) ** 2))
    return torch.stack(perms).to(dummies.device)


def _aligned(dummies: Tensor) -> Tensor:
    perms = align_epochs(dummies)
    return torch.stack([d[p] for d, p in zip(dummies, perms)])


def epoch_consensus(dummies: Tensor) -> Tensor:
    """(E, K, ...) per-epoch dummies -> (K, ...) the mean of the matched dummies, in the first epoch's order."""
    return _aligned(dummies).mean(dim=0)


def epoch_disagreement(dummies: Tensor) -> Tensor:
    """The order-invariant term: mean squared distance of the matched per-epoch dummies from their mean
    (a scalar, 0 when every epoch holds the same K inputs in any order; differentiable through the dummies,
    not through the matching)."""
    aligned = _aligned(dummies)
    return (aligned - aligned.mean(dim=0, keepdim=True)).pow(2).mean()


@dataclass(frozen=True)
class LocalLayout:
    """Where the attack's dummies sit in a FedAvg client's local mini-batches.

    Attributes:
        sets: sets of K dummies: one per local epoch in the order-free layout of a shuffling client, else 1.
        orders: (⌈E⌉, K) int64 initial per-epoch orders, as indices into the ``sets·K`` dummies
            (:func:`~inversion.fl.local.unroll_local_training`): the order-free search starts there.
        search: the order is searched (order-free with labels fixed per dummy); else it stays.
    """

    sets: int
    orders: Tensor
    search: bool = False

    @classmethod
    def build(
        cls, local: LocalTraining, k: int, order: str, fixed_labels: bool, known_orders: Tensor | None = None
    ) -> LocalLayout:
        """The layout for a schedule, a ``local_order`` mode (:data:`LOCAL_ORDERS`) and the plan's labels.

        Args:
            local: the client's public schedule.
            k: K.
            order: one of :data:`LOCAL_ORDERS`.
            fixed_labels: the plan's labels are fixed (each dummy keeps its label, so the search moves dummies
                between mini-batches); learnable labels need no search.
            known_orders: for ``oracle`` only, the client's private (⌈E⌉, K) orders: the dummies (with the plan's
                labels in the client's sample order) take them.
        """
        if order not in LOCAL_ORDERS:
            raise InputError(f"unknown local order {order!r}; choose one of {', '.join(LOCAL_ORDERS)}")
        if (order == "oracle") != (known_orders is not None):
            raise InputError(
                "local_order=oracle takes the client's private mini-batch orders (local_orders=, an evaluation upper "
                "bound), and only it does"
            )
        epochs = local.epochs_started(k)
        if known_orders is not None:
            return cls(1, local.check_orders(known_orders, k))
        free = order == "free" or (order == "auto" and local.shuffle)
        sets = epochs if free and local.shuffle else 1
        orders = torch.arange(sets * k).view(sets, k).expand(epochs, k).contiguous()
        return cls(sets, orders, search=free and fixed_labels and local.batches_per_epoch(k) > 1)

    def consensus(self, dummies: Tensor) -> Tensor:
        """(sets·K, ...) dummies -> the (K, ...) reconstruction (the matched mean over the sets)."""
        if self.sets == 1:
            return dummies
        return epoch_consensus(dummies.view(self.sets, -1, *dummies.shape[1:]))

    def disagreement(self, dummies: Tensor) -> Tensor | None:
        """The order-invariant term of (sets·K, ...) dummies; None with one set."""
        if self.sets == 1:
            return None
        return epoch_disagreement(dummies.view(self.sets, -1, *dummies.shape[1:]))

    def steps_of(self, local: LocalTraining, k: int) -> list[tuple[int, int, int]]:
        """(step, epoch row of :attr:`orders`, mini-batch) of each local step."""
        return [(s, local.epoch(s, k), s % local.batches_per_epoch(k)) for s in range(local.steps)]

    def predict(self, orders: Tensor, contributions: Tensor, local: LocalTraining) -> Tensor:
        r"""The surrogate of the search: :math:`\sum_s \sum_{k \in b_s} c_{s,k}` (C,) for the (S, N, C)
        per-step, per-dummy contributions, with the mini-batches :math:`b_s` that ``orders`` (⌈E⌉, K) lays out."""
        k = orders.shape[1]
        total = torch.zeros(contributions.shape[2], dtype=contributions.dtype)
        for s, row, _ in self.steps_of(local, k):
            total += contributions[s, orders[row, local.rows(s, k)]].sum(dim=0)
        return total

    def anneal(
        self,
        orders: Tensor,
        labels: Tensor,
        contributions: Tensor,
        target: Tensor,
        local: LocalTraining,
        generator: torch.Generator,
        moves: int,
    ) -> Tensor:
        r"""Simulated annealing of the mini-batch assignment on the surrogate :math:`\|\text{predict} - t\|^2`.

        A move swaps two dummies of different ``labels`` between two mini-batches of one epoch row (of every row
        when one dummy set serves all epochs); a worse assignment is accepted with probability
        :math:`e^{-\Delta/T}`, the temperature falling geometrically from the mean change of random moves to
        1e-6 of it. It starts from ``orders`` and from :data:`ANNEAL_STARTS` - 1 random assignments, and returns
        the best assignment visited, (⌈E⌉, K) int64.

        Args:
            orders: the current assignment, (⌈E⌉, K) indices into the N dummies.
            labels: (N,) the dummies' labels.
            contributions: (S, N, C) float64, what dummy k adds in step s.
            target: (C,) float64, what the steps add up to.
            local: the client's schedule.
            generator: the search's randomness (seeded by the caller: a resumed attack repeats it).
            moves: moves tried from each start.
        """
        k = orders.shape[1]
        rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
        rows = orders.shape[0] if self.sets > 1 else 1
        # by_batch[r, j, d]: what dummy d adds when it sits in mini-batch j of row r (summed over the row's steps)
        batches = local.batches_per_epoch(k)
        by_batch = np.zeros((rows, batches, *contributions.shape[1:]))
        for s, epoch, batch in self.steps_of(local, k):
            by_batch[epoch if self.sets > 1 else 0, batch] += contributions[s].numpy()
        goal, held_labels = target.numpy(), labels.numpy()
        slot_batch = np.arange(k) // local.batch_size
        best, best_cost = orders.numpy().copy(), math.inf
        for start in range(ANNEAL_STARTS):
            current = orders.numpy().copy()
            if start:
                for row in range(rows):
                    current[row] = rng.permutation(current[row])
            if self.sets == 1:
                current[:] = current[0]
            residual = self.predict(torch.as_tensor(current), contributions, local).numpy() - goal
            cost = float(residual @ residual)
            trials = rng.integers(0, [rows, k, k], size=(moves, 3))
            draws = rng.random(moves)
            changes = []
            for row, p, q in trials[:64]:  # the temperature's scale: the mean change of random moves
                a, b, jp, jq = current[row, p], current[row, q], slot_batch[p], slot_batch[q]
                change = by_batch[row, jp, b] - by_batch[row, jp, a] + by_batch[row, jq, a] - by_batch[row, jq, b]
                changes.append(abs(float((residual + change) @ (residual + change)) - cost))
            scale = float(np.mean(changes)) + 1e-30
            run_best, run_cost = current.copy(), cost
            for step, (row, p, q) in enumerate(trials):
                jp, jq = slot_batch[p], slot_batch[q]
                a, b = current[row, p], current[row, q]
                if jp == jq or held_labels[a] == held_labels[b]:
                    continue
                moved = (
                    residual + by_batch[row, jp, b] - by_batch[row, jp, a] + by_batch[row, jq, a] - by_batch[row, jq, b]
                )
                new_cost = float(moved @ moved)
                heat = scale * 1e-6 ** (step / moves)
                if new_cost < cost or draws[step] < math.exp(-(new_cost - cost) / heat):
                    current[row if self.sets > 1 else slice(None), p] = b
                    current[row if self.sets > 1 else slice(None), q] = a
                    residual, cost = moved, new_cost
                    if cost < run_cost:
                        run_best, run_cost = current.copy(), cost
            if run_cost < best_cost:
                best, best_cost = run_best, run_cost
        return torch.as_tensor(best, dtype=torch.int64)
