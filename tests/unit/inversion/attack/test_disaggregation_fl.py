r"""Disaggregation of FedAvg updates (:func:`inversion.attack.disaggregation.disaggregate` with a one-local-epoch
weight delta): a tiny MLP's client trains two local steps of two samples each on hand-built 4x4 images whose
pixels are mostly exactly 0.

Every local step's gradient has its first-layer rows in span([x_k, 1]), so the delta's first layer still spans the
images; each sample is then verified at the weights its own step started from, which the server gets by replaying
the local steps on the samples verified before it (:class:`~inversion.attack.disaggregation._Replay`).
"""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from inversion.attack.disaggregation import STOPS, _Replay, _stacked, disaggregate, linear_layers
from inversion.fl import LocalTraining, client_update
from inversion.fl.dp import DPSGD
from inversion.utils.errors import InputError

SHAPE = (1, 4, 4)
MEAN, STD = 0.5, 0.25
"""The update's normalisation: a pixel p in [0, 1] enters the model as (p - 0.5) / 0.25, in [-2, 2]."""
SIZE = 2.0
"""The largest normalised pixel, in absolute value."""
CLASSES = 10
LABELS = torch.tensor([0, 2, 1, 2])  # two samples share label 2
INK = torch.tensor([0.9, 0.35, 0.6, 1.0, 0.5, 0.75, 0.25, 0.8, 0.45, 0.7, 0.3, 0.95, 0.55, 0.65, 0.4, 0.85])
"""The [0, 1] value of each of the 16 pixels where it is lit."""
EPS32 = float(torch.finfo(torch.float32).eps)
LR = 0.5
"""The local learning rate: one step moves the weights enough that a sample fails verification at another step's
weights (at 0.05 some seeds' samples of the second step verify at the first's weights too)."""


def mlp(seed: int = 4) -> nn.Sequential:
    """16 -> 10 -> 10 -> CLASSES with ReLUs, seeded (the global RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, CLASSES)
        )


def disjoint(k: int) -> torch.Tensor:
    """K images; pixel j is lit (INK[j]) in image j mod K only, 0 elsewhere: (K, 1, 4, 4) normalised."""
    pixels = torch.zeros(k, 16)
    for j in range(16):
        pixels[j % k, j] = INK[j]
    return ((pixels - MEAN) / STD).reshape(-1, *SHAPE)


def fedavg(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, local: LocalTraining, orders=None):
    """The float32 client's FedAvg update (torch SGD on a copy of ``model``), with its normalisation."""
    return client_update(model, images, labels, mean=[MEAN], std=[STD], local=local, orders=orders)


def match(found: np.ndarray, true: np.ndarray) -> list[int]:
    """For each found input (n, 16), the index of the nearest true one (K, 16), in the max norm."""
    return [int(np.abs(true - row).max(axis=1).argmin()) for row in found]


def rounding(model: nn.Module, update, name: str) -> float:
    r"""A bound on the float32 rounding of one pseudo-gradient entry of parameter ``name``: each of the S local
    steps and the final subtraction round the weights to :math:`\epsilon_{32}/2` of their size (the delta is
    rounded at the weights' scale, not its own), scaled as :meth:`SharedUpdate.pseudo_gradients` scales."""
    steps = update.meta.local.steps
    size = float(dict(model.named_parameters())[name].detach().abs().max()) + float(update.gradients[name].abs().max())
    return abs(update.pseudo_gradient_scale) * (steps + 1) * EPS32 * size


def bounds(model: nn.Module, update, layer) -> float:
    """The larger :func:`rounding` bound of a linear layer's weight and bias."""
    return max(rounding(model, update, name) for name in (layer.weight, layer.bias) if name is not None)


def tilt(model: nn.Module, update, k: int) -> float:
    r"""How far the client's float32 rounding E may tilt the rank-K row space of the first layer's
    (pseudo-)gradient (Wedin): :math:`\|E\| / \sigma_K`. For FedAvg every entry of E at the :func:`rounding` bound
    (:math:`\|E\|_F`); for FedSGD :math:`\|E\| \approx \epsilon_{32} \sigma_1`, as ``test_disaggregation.py``
    takes it. A recovered input moves by about this times its size."""
    layer = linear_layers(model, SHAPE)[0]
    s = np.linalg.svd(_stacked(update.pseudo_gradients(), layer), compute_uv=False)
    if update.meta.local is None:
        return EPS32 * s[0] / s[k - 1]
    entries = layer.module.weight.numel() + layer.module.bias.numel()
    return bounds(model, update, layer) * math.sqrt(entries) / s[k - 1]


def trajectory(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, local: LocalTraining) -> list:
    """The weights every local step starts from, float64 (the client's schedule in order): [model_s]."""
    client = copy.deepcopy(model).double()
    optimizer = local.optimizer(client.parameters())
    k, models = len(labels), []
    for step in range(local.steps):
        models.append(copy.deepcopy(client))
        rows = local.rows(step, k)
        optimizer.zero_grad()
        nn.functional.cross_entropy(client(images[rows].double()), labels[rows]).backward()
        optimizer.step()
    return models


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 0.01)])
def test_a_fedavg_batch_is_recovered_exactly_with_its_labels_and_mini_batches(momentum, weight_decay):
    model, images = mlp(), disjoint(4)
    local = LocalTraining(steps=2, batch_size=2, lr=LR, momentum=momentum, weight_decay=weight_decay)
    update = fedavg(model, images, LABELS, local)
    result = disaggregate(update, model)
    true = images.flatten(1).double().numpy()
    assert result.found == 4 and result.stopped == STOPS["all"] and result.remaining_gradient is None
    order = match(result.inputs, true)
    assert sorted(order) == [0, 1, 2, 3]
    np.testing.assert_allclose(result.inputs, true[order], rtol=0, atol=8 * tilt(model, update, 4) * SIZE)
    assert result.labels.tolist() == LABELS[order].tolist()
    assert result.steps.tolist() == [index // 2 for index in order]  # samples 0, 1 in step 0; 2, 3 in step 1


def test_a_shuffled_epoch_is_recovered_in_the_clients_private_mini_batches():
    """The server never sees a shuffling client's order; each verified sample's step is the one whose weights
    explain it, so the private mini-batches come out too."""
    model, images = mlp(), disjoint(4)
    local = LocalTraining(steps=2, batch_size=2, lr=LR, shuffle=True)
    orders = torch.tensor([[3, 0, 2, 1]])  # step 0 trains samples 3 and 0, step 1 samples 2 and 1
    result = disaggregate(fedavg(model, images, LABELS, local, orders), model)
    order = match(result.inputs, images.flatten(1).double().numpy())
    assert result.found == 4 and sorted(order) == [0, 1, 2, 3]
    assert result.labels.tolist() == LABELS[order].tolist()
    step_of = {3: 0, 0: 0, 2: 1, 1: 1}
    assert result.steps.tolist() == [step_of[index] for index in order]


def test_replaying_the_recovered_batch_reproduces_the_delta():
    """The replay of the verified samples in their steps explains every linear layer's pseudo-gradient to the
    client's float32 rounding (:func:`rounding`, plus what the recovered inputs' error moves: the row space's
    :func:`tilt`, relative); with one label changed it does not."""
    model, images = mlp(), disjoint(4)
    local = LocalTraining(steps=2, batch_size=2, lr=LR, momentum=0.9, weight_decay=0.01)
    update = fedavg(model, images, LABELS, local)
    result = disaggregate(update, model)
    assert result.found == 4
    layers = linear_layers(model, SHAPE)
    pseudo = update.pseudo_gradients()
    replay = _Replay(update, model, layers, SHAPE, 4)
    replay.add(result.inputs, result.labels, result.steps)
    wrong = _Replay(update, model, layers, SHAPE, 4)
    wrong.add(result.inputs, (result.labels + np.eye(4, dtype=np.int64)[0]) % CLASSES, result.steps)
    for layer, residual, mislabelled in zip(layers, replay.residual, wrong.residual, strict=True):
        shared = _stacked(pseudo, layer)
        allowed = bounds(model, update, layer) + 4 * tilt(model, update, 4) * float(np.abs(shared).max())
        assert float(np.abs(residual).max()) <= allowed, layer.weight
        assert float(np.abs(mislabelled).max()) > 100 * allowed, layer.weight


def test_the_remaining_gradient_is_the_mean_final_layer_pseudo_gradient_of_the_samples_not_recovered():
    r"""Without momentum, over one epoch of equal mini-batches, the pseudo-gradient is
    :math:`\frac1K \sum_k \nabla\ell_k(\theta_{s(k)})`, each sample's gradient at the weights of its own step; with
    one sample of the first step verified, the rest is the mean of the other three's."""
    model, images = mlp(), disjoint(4)
    local = LocalTraining(steps=2, batch_size=2, lr=LR)
    update = fedavg(model, images, LABELS, local)
    result = disaggregate(update, model, max_programmes=1)
    assert result.found == 1 and result.steps.tolist() == [0] and result.remaining_gradient is not None
    (found,) = match(result.inputs, images.flatten(1).double().numpy())
    models = trajectory(model, images, LABELS, local)
    expected = [torch.zeros(CLASSES, 10, dtype=torch.float64), torch.zeros(CLASSES, dtype=torch.float64)]
    for index in (k for k in range(4) if k != found):
        at = models[index // 2]
        loss = nn.functional.cross_entropy(at(images[index : index + 1].double()), LABELS[index : index + 1]) / 3
        for total, g in zip(expected, torch.autograd.grad(loss, [at[5].weight, at[5].bias]), strict=True):
            total += g
    for name, remaining, want in zip(("5.weight", "5.bias"), result.remaining_gradient, expected, strict=True):
        allowed = rounding(model, update, name) * 4 / 3 + 8 * tilt(model, update, 4) * float(want.abs().max())
        assert np.abs(remaining - want.numpy()).max() <= allowed, name


def test_a_clipped_dp_sgd_sample_is_peeled_with_its_clipping_factor():
    r"""DP-SGD without noise: the FedSGD gradient is :math:`\frac1K \sum_k c_k \nabla\ell_k` with Opacus's factors
    :math:`c_k = \min(1, C / \|\nabla\ell_k\|)`, here below 1 for every sample; with one sample verified, the
    rest is the mean of the other three's clipped gradients (to the float32 client's rounding, as in
    ``test_disaggregation.py``: :math:`4 \epsilon_{32} \sqrt K` of the largest entry, scaled by K/(K-1))."""
    pytest.importorskip("opacus")
    model, images = mlp(), disjoint(4)
    reference = copy.deepcopy(model).double()
    per_sample = []
    for index in range(4):
        loss = nn.functional.cross_entropy(reference(images[index : index + 1].double()), LABELS[index : index + 1])
        per_sample.append(torch.autograd.grad(loss, list(reference.parameters())))
    norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in grads)) for grads in per_sample])
    clip = 0.5 * float(norms.min())  # every sample clipped to half its norm or less
    update = client_update(model, images, LABELS, mean=[MEAN], std=[STD], dp=DPSGD(0.0, max_grad_norm=clip))
    result = disaggregate(update, model, max_programmes=1)
    assert result.found == 1 and result.remaining_gradient is not None
    (found,) = match(result.inputs, images.flatten(1).double().numpy())
    names = [name for name, _ in reference.named_parameters()]
    final = [names.index("5.weight"), names.index("5.bias")]
    for position, remaining in zip(final, result.remaining_gradient, strict=True):
        want = sum(per_sample[k][position] * clip / norms[k] for k in range(4) if k != found) / 3
        shared = float(update.gradients[names[position]].abs().max())
        allowed = (4 * EPS32 * math.sqrt(4) + 4 * tilt(model, update, 4)) * shared * 4 / 3
        assert np.abs(remaining - want.numpy()).max() <= allowed, names[position]


def test_a_partial_local_epoch_leaves_the_untrained_samples_out():
    """One step of two samples out of four: only those two are in the update, and the search stops once they are
    verified."""
    model, images = mlp(), disjoint(4)
    result = disaggregate(fedavg(model, images, LABELS, LocalTraining(steps=1, batch_size=2, lr=LR)), model)
    assert result.found == 2 and result.stopped == STOPS["trained"]
    assert sorted(match(result.inputs, images.flatten(1).double().numpy())) == [0, 1]


def test_several_local_epochs_and_a_first_layer_on_features_are_refused_in_one_line():
    model, images = mlp(), disjoint(4)
    two_epochs = fedavg(model, images, LABELS, LocalTraining(steps=3, batch_size=2, lr=LR))
    with pytest.raises(InputError, match="at most one local epoch .* 3 steps over 2 mini-batches") as refused:
        disaggregate(two_epochs, model)
    assert "\n" not in str(refused.value)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        convolutional = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 10))
    update = fedavg(convolutional, images, LABELS, LocalTraining(steps=2, batch_size=2, lr=LR))
    with pytest.raises(InputError, match="'3.weight' reads features, not the image") as refused:
        disaggregate(update, convolutional)
    assert "\n" not in str(refused.value)
