r"""Disaggregation (:mod:`inversion.attack.disaggregation`): a FedSGD batch recovered exactly from the gradients of
a tiny MLP's linear layers, on hand-built 4x4 images whose pixels are mostly exactly 0.

In ``disjoint`` batches every pixel is lit in exactly one image, so each image is a vertex of the first layer's
polytope :math:`\{v \in \text{row}(G): v_{D+1} = 1,\ \ell \le v \le u\}`; in the ``nested`` batch image 2 also
holds half of image 0's ink, so it lies inside an edge of that polytope (between image 0 and a spurious vertex)
until image 0 is peeled off.
"""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from inversion.attack.disaggregation import (
    CLARITY,
    LOOSEST,
    TOLERANCE,
    _relative_residual,
    _stacked,
    _subspaces,
    _Tail,
    disaggregate,
    layer_residuals,
    linear_layers,
    vertex_candidates,
)
from inversion.fl import LocalTraining, SharedUpdate, client_update
from inversion.utils.errors import InputError

SHAPE = (1, 4, 4)
MEAN, STD = 0.5, 0.25
"""The update's normalisation: a pixel p in [0, 1] enters the model as (p - 0.5) / 0.25, in [-2, 2]."""
LOWER, UPPER = (0 - MEAN) / STD, (1 - MEAN) / STD
CLASSES = 10
LABELS = torch.tensor([0, 2, 1, 2])  # two samples share label 2
INK = torch.tensor([0.9, 0.35, 0.6, 1.0, 0.5, 0.75, 0.25, 0.8, 0.45, 0.7, 0.3, 0.95, 0.55, 0.65, 0.4, 0.85])
"""The [0, 1] value of each of the 16 pixels where it is lit."""
EPS32 = float(torch.finfo(torch.float32).eps)
MODEL_SEED = 4
"""The MLP's seed: its batches' first-layer gradients are well conditioned (sigma_1 / sigma_K about 9)."""


def mlp(seed: int = MODEL_SEED) -> nn.Sequential:
    """16 -> 10 -> 10 -> CLASSES with ReLUs, seeded (the global RNG is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, CLASSES)
        )


def normalised(pixels: torch.Tensor) -> torch.Tensor:
    """(K, 16) pixels in [0, 1] -> (K, 1, 4, 4) normalised float32 images."""
    return ((pixels - MEAN) / STD).reshape(-1, *SHAPE)


def disjoint(k: int) -> torch.Tensor:
    """K images; pixel j is lit (INK[j]) in image j mod K only, 0 elsewhere: (K, 1, 4, 4) normalised."""
    pixels = torch.zeros(k, 16)
    for j in range(16):
        pixels[j % k, j] = INK[j]
    return normalised(pixels)


def nested() -> torch.Tensor:
    """disjoint(3), with image 2 also holding half of image 0's ink: (3, 1, 4, 4) normalised."""
    pixels = torch.zeros(3, 16)
    for j in range(16):
        pixels[j % 3, j] = INK[j]
    pixels[2] += 0.5 * pixels[0]
    return normalised(pixels)


def fedsgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
    """The float32 client's FedSGD update, with its normalisation and input shape (``meta.bounds()`` works)."""
    return client_update(model, images, labels, mean=[MEAN], std=[STD])


def flat(images: torch.Tensor) -> np.ndarray:
    """(K, 1, 4, 4) -> (K, 16) float64: the first linear layer's inputs."""
    return images.flatten(1).double().numpy()


def match(found: np.ndarray, true: np.ndarray) -> list[int]:
    """For each found input (n, 16), the index of the nearest true one (K, 16), in the max norm."""
    return [int(np.abs(true - row).max(axis=1).argmin()) for row in found]


def per_sample_sum(model: nn.Module, inputs: np.ndarray, labels: np.ndarray, k: int) -> dict[str, torch.Tensor]:
    """Sum over the given samples of the gradient of their cross-entropy / K (each one's share of the mean
    cross-entropy over K), computed one sample at a time in float64 with autograd: name -> gradient."""
    reference = copy.deepcopy(model).double()
    names, parameters = zip(*reference.named_parameters(), strict=True)
    total = [torch.zeros_like(p) for p in parameters]
    for x, y in zip(inputs, labels, strict=True):
        logits = reference(torch.as_tensor(x, dtype=torch.float64).reshape(1, *SHAPE))
        loss = nn.functional.cross_entropy(logits, torch.tensor([int(y)])) / k
        for sum_, g in zip(total, torch.autograd.grad(loss, list(parameters)), strict=True):
            sum_ += g
    return dict(zip(names, total, strict=True))


def tilt(model: nn.Module, update, k: int) -> float:
    r"""How far the float32 gradient's rounding, :math:`\|E\| \approx \epsilon_{32} \sigma_1`, may tilt the rank-K
    row space of the first layer's gradient: :math:`\epsilon_{32} \sigma_1 / \sigma_K` (Wedin). A vertex of that
    space (a recovered input) moves by about this times its size."""
    s = np.linalg.svd(_stacked(update.gradients, linear_layers(model, SHAPE)[0]), compute_uv=False)
    return EPS32 * s[0] / s[k - 1]


def verifier(model: nn.Module, update, k: int):
    """``residuals(points (n, 16)) -> (n, CLASSES)``: each point's worst layer residual for every label, against
    the rank-K singular subspaces of every linear layer's gradient (as disaggregate builds them in its first
    round: its floors only drop the directions beyond rank K). Every layer here has more outputs than K, so every
    one is informative."""
    layers = linear_layers(model, SHAPE)
    gradients = update.pseudo_gradients()
    spaces = [_subspaces(_stacked(gradients, layer), 0.0, k) for layer in layers]
    tail = _Tail(model, layers, SHAPE)

    def residuals(points: np.ndarray) -> np.ndarray:
        rows = []
        for point in points:
            ins, grads = tail(np.repeat(point[None], CLASSES, axis=0), np.arange(CLASSES))
            rows.append(layer_residuals(ins, grads, spaces, [True] * len(layers)))
        return np.stack(rows)

    return residuals


def never_verified(scores: np.ndarray) -> bool:
    """Whether candidates with these residuals (n, CLASSES) fail the verifier's rule at its loosest (a residual
    above :data:`LOOSEST`, or a best label not :data:`CLARITY` times clearer than the next) for every label."""
    ordered = np.sort(scores, axis=1)
    return bool(((ordered[:, 0] > LOOSEST) | (ordered[:, 0] > CLARITY * ordered[:, 1])).all())


def test_linear_layers_come_in_forward_order_with_their_parameter_names():
    class Reordered(nn.Module):  # the head is registered first but runs last; the body's layer has no bias
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(6, 3)
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 6, bias=False), nn.ReLU())

        def forward(self, x):
            return self.head(self.body(x))

    model = Reordered()
    layers = linear_layers(model, SHAPE)
    assert [(layer.module, layer.weight, layer.bias) for layer in layers] == [
        (model.body[1], "body.1.weight", None),
        (model.head, "head.weight", "head.bias"),
    ]
    assert [(layer.weight, layer.bias) for layer in linear_layers(mlp(), SHAPE)] == [
        ("1.weight", "1.bias"),
        ("3.weight", "3.bias"),
        ("5.weight", "5.bias"),
    ]

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 16)

        def forward(self, x):
            return self.fc(self.fc(x.flatten(1)))

    with pytest.raises(InputError, match="calls one linear layer twice"):
        linear_layers(Twice(), SHAPE)
    with pytest.raises(InputError, match="has no linear layer"):
        linear_layers(nn.Sequential(nn.Conv2d(1, 2, 3)), SHAPE)


def test_a_fedavg_update_and_a_model_with_batch_norm_are_refused_in_one_line():
    images, labels = disjoint(4), LABELS
    gradients = fedsgd(mlp(), images, labels).gradients
    delta = {name: -0.1 * g for name, g in gradients.items()}  # one local step of SGD at learning rate 0.1
    local = LocalTraining(steps=2, batch_size=4, lr=0.1)  # two local epochs: each sample's gradient twice
    fedavg = SharedUpdate.from_weight_delta(delta, 4, local=local, mean=[MEAN], std=[STD], input_shape=SHAPE)
    with pytest.raises(InputError, match="at most one local epoch") as refused:
        disaggregate(fedavg, mlp())
    assert "\n" not in str(refused.value)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        normed = nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 3))
    with pytest.raises(InputError, match="batch norm mixes the samples") as refused:
        disaggregate(fedsgd(normed, images, LABELS % 3), normed)
    assert "\n" not in str(refused.value)


def test_verified_inputs_are_the_true_images_with_their_labels():
    model, images = mlp(), disjoint(4)
    update = fedsgd(model, images, LABELS)
    result = disaggregate(update, model)
    true = flat(images)
    assert result.found == 4 and result.on_image and result.layer == "1.weight"
    order = match(result.inputs, true)
    assert sorted(order) == [0, 1, 2, 3]  # every image once, in any order
    size = max(abs(LOWER), abs(UPPER))
    atol = 8 * tilt(model, update, 4) * size  # 8 tilts of the largest input (measured: under 1 on 7 seeds)
    np.testing.assert_allclose(result.inputs, true[order], rtol=0, atol=atol)
    assert result.labels.tolist() == LABELS[order].tolist()
    assert (result.residuals < TOLERANCE).all()
    assert result.images(SHAPE).shape == (4, *SHAPE)


def test_an_exactly_recovered_batch_reproduces_every_linear_layers_gradient():
    r"""The recovered samples' own gradients, summed with weight 1/K, are the shared gradient: to the float32
    client's rounding (each entry a sum of K terms, each rounded to a few :math:`\epsilon_{32}` of its size:
    :math:`4 \epsilon_{32} \sqrt K` times the largest entry), plus what the recovered inputs' error moves each
    term (their relative error, the row space's :func:`tilt`, moves a term by about as much relative)."""
    model, images = mlp(), disjoint(4)
    update = fedsgd(model, images, LABELS)
    result = disaggregate(update, model)
    assert result.found == 4 and result.remaining_gradient is None
    relative = 4 * EPS32 * math.sqrt(4) + 4 * tilt(model, update, 4)
    explained = per_sample_sum(model, result.inputs, result.labels, 4)
    mislabelled = per_sample_sum(model, result.inputs, (result.labels + 1) % CLASSES, 4)
    for layer in linear_layers(model, SHAPE):
        for name in (layer.weight, layer.bias):
            shared = update.gradients[name].double()
            assert float((explained[name] - shared).abs().max()) <= relative * float(shared.abs().max()), name
    final = update.gradients["5.bias"].double()  # the tolerance tells a wrong label from the right one by far
    assert float((mislabelled["5.bias"] - final).abs().max()) > 1e3 * relative * float(final.abs().max())


def test_the_remaining_gradient_is_the_mean_final_layer_gradient_of_the_samples_not_recovered():
    model, images = mlp(), disjoint(4)
    update = fedsgd(model, images, LABELS)
    result = disaggregate(update, model, max_programmes=1)  # one programme: one sample, then the budget is spent
    assert result.found == 1 and result.remaining_gradient is not None
    (found,) = match(result.inputs, flat(images))
    rest = [k for k in range(4) if k != found]
    expected = per_sample_sum(model, flat(images)[rest], LABELS[rest].numpy(), 3)  # the mean over the other 3
    relative = (
        (4 * EPS32 * math.sqrt(4) + 4 * tilt(model, update, 4)) * 4 / 3
    )  # the shared gradient's, scaled by K/(K-1)
    for name, remaining in zip(("5.weight", "5.bias"), result.remaining_gradient, strict=True):
        scale = float(update.gradients[name].abs().max())
        assert np.abs(remaining - expected[name].numpy()).max() <= relative * scale, name


def test_a_mixture_of_two_samples_fails_verification_for_every_label():
    model, images = mlp(), disjoint(4)
    residuals = verifier(model, fedsgd(model, images, LABELS), 4)
    true = flat(images)
    scores = residuals(true)  # (4, CLASSES)
    assert scores.argmin(axis=1).tolist() == LABELS.tolist()  # the label that explains a sample best is its own
    assert (scores[np.arange(4), LABELS.numpy()] < TOLERANCE).all()
    for a in range(4):
        for b in range(a + 1, 4):  # [a_a, 1] 0.6 + [a_b, 1] 0.4: in the first layer's row space, bias coordinate 1
            mixture = (0.6 * true[a] + 0.4 * true[b])[None]
            assert never_verified(residuals(mixture)), (a, b)


def test_the_output_gradients_reject_a_mixture_that_every_row_space_holds():
    """With every ReLU active on the batch the model is affine up to its softmax: a mixture's input to every layer
    is the mixture of the samples' inputs, in each row space; only the softmax's curvature (the output gradients,
    checked against the column spaces) tells it from a sample."""
    model, images = mlp(), disjoint(3)
    with torch.no_grad():  # raise each hidden unit's bias until it is at least 0.5 on every sample
        hidden = images.flatten(1)
        for layer in (model[1], model[3]):
            layer.bias += (0.5 - layer(hidden).min(dim=0).values).clamp_min(0)
            hidden = layer(hidden)
            assert float(hidden.min()) >= 0.5 - 1e-6  # on every mixture of the samples too (convex)
    update = fedsgd(model, images, LABELS[:3])
    residuals = verifier(model, update, 3)
    true = flat(images)
    scores = residuals(true)
    assert (scores[np.arange(3), LABELS[:3].numpy()] < TOLERANCE).all()
    layers = linear_layers(model, SHAPE)
    rows = [_subspaces(_stacked(update.gradients, layer), 0.0, 3).right for layer in layers]
    tail = _Tail(model, layers, SHAPE)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        mixture = np.repeat((0.6 * true[a] + 0.4 * true[b])[None], CLASSES, axis=0)
        ins, _ = tail(mixture, np.arange(CLASSES))
        held = max(_relative_residual(ins[index], rows[index]).max() for index in (1, 2))
        assert held < TOLERANCE  # the row spaces cannot tell
        assert never_verified(residuals(mixture[:1])), (a, b)


def test_a_sample_inside_an_edge_of_the_polytope_is_found_after_peeling():
    """Image 2 of the nested batch lies inside the polytope's edge from image 0 to a spurious vertex (image 2
    pushed away from image 0 until its brightest own pixel reaches 1): no programme on the full row space lands on
    it, and the spurious vertices the programmes do land on fail verification. Once images 0 and 1 are peeled off,
    image 2 is all that is left."""
    model, images, labels = mlp(), nested(), LABELS[:3]
    update = fedsgd(model, images, labels)
    true = flat(images)
    right = _subspaces(_stacked(update.gradients, linear_layers(model, SHAPE)[0]), 0.0, 3).right
    seen: list[np.ndarray] = []

    def record(v: np.ndarray) -> bool:  # every candidate the programmes give, none accepted: all of them are tried
        seen.append(v[:-1])
        return False

    vertex_candidates(right, np.full(16, LOWER), budget=64, accept=record, wanted=3)
    distance = np.stack([np.abs(true - v).max(axis=1) for v in seen])  # (candidates, 3), max norm
    size = max(abs(LOWER), abs(UPPER))
    exact = distance.min(axis=1) <= 8 * tilt(model, update, 3) * size  # polished; raw LP solutions lie within its slack
    assert set(distance[exact].argmin(axis=1).tolist()) == {0, 1}  # images 0 and 1 are vertices
    assert distance[:, 2].min() > 0.1  # image 2 is none
    spurious = np.stack(seen)[distance.min(axis=1) > 0.1]
    assert len(spurious) and never_verified(verifier(model, update, 3)(spurious))

    result = disaggregate(update, model)
    order = match(result.inputs, true)
    assert sorted(order) == [0, 1, 2] and result.rounds >= 2 and result.remaining_gradient is None
    np.testing.assert_allclose(result.inputs, true[order], rtol=0, atol=8 * tilt(model, update, 3) * size)
    assert result.labels.tolist() == labels[order].tolist()


def test_a_vertex_whose_empty_pixels_carry_float32_rounding_is_still_found():
    """A one-sample row space from a float32 gradient: the sample's empty pixels (exactly at the lower bound) come
    out a few float32 epsilons off it, some below. The programme's slack must take that, or no vertex is left."""
    x = flat(disjoint(3))[0]
    v = np.append(x, 1.0)
    empty = np.flatnonzero(x == LOWER)
    noise = np.zeros(17)
    noise[empty] = 4 * EPS32 * np.linalg.norm(v) * (-1.0) ** np.arange(len(empty))
    right = ((v + noise) / np.linalg.norm(v + noise))[:, None]
    found, _ = vertex_candidates(right, np.full(16, LOWER), budget=16, accept=lambda candidate: True, wanted=1)
    assert len(found) == 1
    np.testing.assert_allclose(found[0], v, rtol=0, atol=8 * EPS32 * np.linalg.norm(v))


def test_samples_that_leave_a_layer_rank_deficient_are_still_recovered():
    model, images = mlp(seed=2), disjoint(4)
    update = fedsgd(model, images, LABELS)
    s = np.linalg.svd(_stacked(update.gradients, linear_layers(model, SHAPE)[1]), compute_uv=False)
    assert s[3] < 1e-6 * s[0] < s[2]  # the premise: rank 3 (float32 rounding beyond it)
    assert disaggregate(update, model).found == 4
