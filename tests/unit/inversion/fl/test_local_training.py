"""Local training as clients run it: momentum, weight decay, partial last mini-batches, epochs, shuffling."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from inversion.fl import LocalTraining, SharedUpdate, client_update, local_training_delta, unroll_local_training
from inversion.models import build_model

K = 10  # with B = 4: mini-batches of 4, 4 and 2 samples in every epoch


def problem(seed=0):
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(5, 5), width=32, seed=seed)
    generator = torch.Generator().manual_seed(seed + 3)
    images = torch.randn(K, 1, 5, 5, generator=generator)
    labels = torch.randint(0, 4, (K,), generator=generator)
    return model, images, labels


def test_an_epoch_has_ceil_k_over_b_mini_batches_the_last_one_partial():
    local = LocalTraining.from_epochs(2, 4, 0.1, K)
    assert local.steps == 6 and local.epochs(K) == 2 and local.epochs_started(K) == 2
    assert [local.rows(s, K) for s in range(6)] == [slice(0, 4), slice(4, 8), slice(8, 10)] * 2
    assert [local.epoch(s, K) for s in range(6)] == [0, 0, 0, 1, 1, 1]
    assert torch.equal(local.orders(K), torch.arange(K).repeat(2, 1))


def test_a_shuffling_client_draws_one_permutation_per_epoch_and_needs_its_generator():
    local = LocalTraining.from_epochs(2, 4, 0.1, K, shuffle=True)
    orders = local.orders(K, torch.Generator().manual_seed(0))
    assert orders.shape == (2, K)
    for row in orders:
        assert sorted(row.tolist()) == list(range(K))
    assert not torch.equal(orders[0], orders[1])
    with pytest.raises(ValueError, match="pass generator="):
        local.orders(K)
    model, images, labels = problem()
    with pytest.raises(ValueError, match="pass the client's orders"):
        client_update(model, images, labels, local=local)


def test_momentum_weights_are_the_geometric_tails():
    # m_s = mu m_{s-1} + d_s, theta_S - theta_0 = -eta sum_s m_s = -eta sum_r d_r (1 + mu + ... + mu^{S-1-r})
    weights = LocalTraining(3, 2, 0.1, momentum=0.5).step_weights()
    torch.testing.assert_close(weights, torch.tensor([1.75, 1.5, 1.0], dtype=torch.float64), rtol=0, atol=0)
    assert torch.equal(LocalTraining(3, 2, 0.1).step_weights(), torch.ones(3, dtype=torch.float64))


def test_the_pseudo_gradient_of_a_momentum_client_is_its_gradient_when_the_weights_barely_move():
    model, images, labels = problem()
    model, images = model.double(), images.double()  # float64: theta_S - theta_0 does not cancel to rounding noise
    gradient = client_update(model, images, labels)
    local = LocalTraining(5, K, 1e-5, momentum=0.9)  # five full-batch steps at a tiny eta: all gradients ~equal
    pseudo = client_update(model, images, labels, local=local).pseudo_gradients()
    for name, g in gradient.gradients.items():  # the weights move by ~1e-5 * 19 |g|: gradients change ~1e-4 relatively
        torch.testing.assert_close(pseudo[name], g, rtol=1e-3, atol=1e-6)


def test_the_unrolled_training_reproduces_torch_sgd_with_momentum_decay_partial_batches_and_shuffling():
    model, images, labels = problem()
    local = LocalTraining.from_epochs(2, 4, 0.3, K, momentum=0.9, weight_decay=0.01, shuffle=True)
    orders = local.orders(K, torch.Generator().manual_seed(5))
    delta = local_training_delta(model, images, labels, local, orders)

    def loss(theta, rows):
        return F.cross_entropy(functional_call(model, theta, (images[rows],)), labels[rows])

    unrolled = unroll_local_training(model, local, K, loss, orders)
    for name, value in delta.items():  # 6 float32 steps, each rounded differently by the two computations
        torch.testing.assert_close(unrolled[name].detach(), value, rtol=1e-4, atol=1e-6)
    in_order = unroll_local_training(model, local, K, loss, local.orders(K, torch.Generator().manual_seed(6)))
    assert any((in_order[n] - delta[n]).abs().max() > 1e-3 for n in delta)  # the order matters


def test_the_schedule_round_trips_and_leaves_out_its_defaults():
    old = {"steps": 4, "batch_size": 2, "lr": 0.1}  # an update file written before the options existed
    assert LocalTraining.from_json(old).to_json() == old
    rich = LocalTraining(4, 3, 0.1, momentum=0.9, weight_decay=5e-4, shuffle=True)
    assert LocalTraining.from_json(rich.to_json()) == rich
    with pytest.raises(ValueError, match="optional momentum"):
        LocalTraining.from_json({**old, "nesterov": True})
    with pytest.raises(ValueError, match="momentum must be a number in"):
        LocalTraining(1, 2, 0.1, momentum=1.0)
    with pytest.raises(ValueError, match="shuffle must be true or false"):
        LocalTraining(1, 2, 0.1, shuffle="yes")


def test_a_saved_shuffled_momentum_update_keeps_its_schedule(tmp_path):
    model, images, labels = problem()
    local = LocalTraining.from_epochs(1, 4, 0.1, K, momentum=0.9, shuffle=True)
    orders = local.orders(K, torch.Generator().manual_seed(1))
    update = client_update(model, images, labels, local=local, orders=orders, mean=[0.0], std=[1.0])
    loaded = SharedUpdate.load(update.save(tmp_path / "u.pt"))
    assert loaded.meta.local == local and loaded.sha256 == update.sha256
