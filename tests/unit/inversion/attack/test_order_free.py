"""The order-free attack on shuffled FedAvg clients: layouts, the epoch consensus and the mini-batch search."""

import pytest
import torch
import torch.nn.functional as F

from inversion.attack import AttackSettings, plan_labels
from inversion.attack.order_free import LocalLayout, epoch_consensus, epoch_disagreement
from inversion.attack.problem import AttackProblem
from inversion.fl import LocalTraining, client_update
from inversion.models import build_model

K = 6


def test_the_consensus_undoes_each_epochs_permutation_and_the_disagreement_sees_a_changed_sample():
    first = torch.randn(K, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    perm = torch.tensor([4, 0, 5, 1, 3, 2])
    exact = torch.stack([first, first[perm]])  # the second epoch holds the same inputs in another order
    torch.testing.assert_close(epoch_consensus(exact), first, rtol=0, atol=0)
    assert float(epoch_disagreement(exact)) == 0.0
    moved = exact.clone()
    moved[1, 2] += 1.0  # one input of the second epoch differs by 1 in each of its 9 pixels
    # matched mean: that pair differs by 1 per pixel, each member 0.5 from the mean: 2 * 9 * 0.25 over 2*K*9 values
    assert float(epoch_disagreement(moved)) == pytest.approx(2 * 9 * 0.25 / (2 * K * 9), rel=1e-6)


def test_layouts_of_each_local_order():
    shuffled = LocalTraining.from_epochs(2, 2, 0.1, K, shuffle=True)
    free = LocalLayout.build(shuffled, K, "auto", fixed_labels=True)
    assert free.sets == 2 and free.search
    assert free.orders.tolist() == [list(range(K)), list(range(K, 2 * K))]  # a dummy set per epoch
    in_order = LocalLayout.build(shuffled, K, "in_order", fixed_labels=True)
    assert in_order.sets == 1 and not in_order.search and in_order.orders.tolist() == [list(range(K))] * 2
    learnable = LocalLayout.build(shuffled, K, "free", fixed_labels=False)
    assert learnable.sets == 2 and not learnable.search  # learnable labels need no search
    unshuffled = LocalLayout.build(LocalTraining.from_epochs(2, 2, 0.1, K), K, "auto", fixed_labels=True)
    assert unshuffled.sets == 1 and not unshuffled.search
    with pytest.raises(ValueError, match="local_order=oracle takes the client's private"):
        LocalLayout.build(shuffled, K, "oracle", fixed_labels=True)
    known = shuffled.orders(K, torch.Generator().manual_seed(0))
    assert torch.equal(LocalLayout.build(shuffled, K, "oracle", True, known).orders, known)


def test_annealing_finds_the_assignment_whose_contributions_add_up_to_the_target():
    local = LocalTraining.from_epochs(1, 2, 0.1, K, momentum=0.5, shuffle=True)  # three mini-batches of 2
    layout = LocalLayout.build(local, K, "free", fixed_labels=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    weights = local.step_weights()  # 1.75, 1.5, 1: the steps count differently, so the batches' order shows
    contributions = torch.stack([w * F.one_hot(labels, 3).double() for w in weights])  # (S, N, C)
    truth = torch.tensor([[0, 2, 4, 1, 3, 5]])  # label counts {0,1} {2,0} {1,2} per mini-batch, in this order
    target = layout.predict(truth, contributions, local)
    assert target.tolist() == [3.25, 2.75, 2.5]  # hand-computed: class 0 in steps 0 and 1, 1 in 0 and 2, ...
    found = layout.anneal(layout.orders, labels, contributions, target, local, torch.Generator().manual_seed(0), 600)
    torch.testing.assert_close(layout.predict(found, contributions, local), target, rtol=0, atol=1e-12)
    counts = [sorted(labels[found[0, i : i + 2]].tolist()) for i in (0, 2, 4)]
    assert counts == [[0, 1], [0, 2], [1, 2]]
    # a dummy set per epoch: each epoch row is searched on its own, the other stays
    two = LocalTraining.from_epochs(2, 2, 0.1, K, momentum=0.5, shuffle=True)
    sets = LocalLayout.build(two, K, "free", fixed_labels=True)
    both = torch.cat([labels, labels])
    per_step = torch.stack([w * F.one_hot(both, 3).double() for w in two.step_weights()])
    wanted = torch.stack([truth[0], torch.arange(K, 2 * K)])  # epoch 1 as the client had it, epoch 2 in order
    target = sets.predict(wanted, per_step, two)
    found = sets.anneal(sets.orders, both, per_step, target, two, torch.Generator().manual_seed(1), 2000)
    torch.testing.assert_close(sets.predict(found, per_step, two), target, rtol=0, atol=1e-12)
    assert all(0 <= int(v) < K for v in found[0]) and all(K <= int(v) < 2 * K for v in found[1])


def shuffled_client(seed=0):
    """(model, update, plan) of a shuffling momentum client whose private order is (0 2) (4 1) (3 5)."""
    model = build_model("fcn", num_classes=3, in_channels=1, image_size=(4, 4), width=16, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(K, 1, 4, 4, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    local = LocalTraining.from_epochs(1, 2, 0.1, K, momentum=0.9, shuffle=True)
    update = client_update(model, images, labels, local=local, orders=ORDERS, mean=[0.0], std=[1.0])
    return model, update, plan_labels("oracle", update, model, true_labels=labels), images


ORDERS = torch.tensor([[0, 2, 4, 1, 3, 5]])  # the client's private order: mini-batches {0,2} {4,1} {3,5}


def fedavg_problem(local_order):
    model, update, plan, images = shuffled_client()
    known = ORDERS if local_order == "oracle" else None
    settings = AttackSettings(local_order=local_order, span="never", objective="l2")
    return AttackProblem(model, update, plan, settings, local_orders=known), images


def test_the_true_batch_in_the_clients_order_matches_and_in_its_own_order_does_not():
    oracle, images = fedavg_problem("oracle")
    in_order, _ = fedavg_problem("in_order")
    exact = float(oracle.match(images, None, create_graph=False).detach())
    wrong = float(in_order.match(images, None, create_graph=False).detach())
    assert exact < 1e-12 < 1e-4 < wrong


def test_the_search_finds_the_label_counts_of_each_mini_batch():
    problem, images = fedavg_problem("free")
    assert problem.searching
    labels = problem.dummy_labels

    def counts_per_batch():
        return [sorted(labels[problem.orders[0, i : i + 2]].tolist()) for i in (0, 2, 4)]

    assert counts_per_batch() == [[0, 0], [1, 1], [2, 2]]  # the dummies in their own order
    problem.reorder(images, None, step=50)
    # the client's mini-batches {0,2} {4,1} {3,5} hold labels {0,1} {0,2} {1,2}, in this order (momentum weighs
    # the earlier ones more, so the order shows); same-label dummies are interchangeable (their images follow)
    assert counts_per_batch() == [[0, 1], [0, 2], [1, 2]]


def test_an_interrupted_order_free_attack_resumes_with_its_searched_orders(monkeypatch, tmp_path):
    from inversion.attack import Inversion
    from tests._data import ctrl_c_at_step

    model, update, plan, _ = shuffled_client()
    settings = AttackSettings(local_order="free", span="never", max_steps=160, checkpoint_every=0)

    def attack():
        return Inversion(model, update, plan, settings, bounds=(torch.zeros(1), torch.ones(1)))

    whole = attack().run(progress=False)
    first = attack()
    calls = ctrl_c_at_step(monkeypatch, 71)  # after the search at step 50 moved the dummies
    assert first.run(progress=False).interrupted
    first.save_checkpoint(tmp_path / "ckpt.pt")
    monkeypatch.undo()
    assert len(calls) == 71
    second = attack()
    second.load_checkpoint(tmp_path / "ckpt.pt")
    resumed = second.run(progress=False)
    assert torch.equal(resumed.images, whole.images) and resumed.loss == whole.loss
