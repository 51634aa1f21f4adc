"""The first-layer span constraint: the row space of a linear first layer's gradient holds the batch."""

import math

import pytest
import torch
from torch import nn

from inversion.attack import AttackSettings, Inversion, plan_labels
from inversion.attack.span import FirstLayerSpan, first_linear_weight, row_space_basis, span_for_update
from inversion.fl import LocalTraining, client_update
from inversion.models import build_model

BOX = (torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
EPS = torch.finfo(torch.float32).eps
SPAN_TOL = 16 * EPS
"""How far (relative) float32 dummies in the span lie from the batch's span: the float32 rounding of the images
(a few eps) and the tilt of a basis computed from a float32 gradient (about eps times its condition number,
σ1/σ4 = 3.5 here); measured below 1 eps."""


def batch_projection(images, batch):
    """The orthogonal projection of ``images`` onto the span of the private ``batch``, flattened, in float64:
    a reference that does not use the attack's basis."""
    q, _ = torch.linalg.qr(batch.flatten(1).double().T)
    return images.flatten(1).double() @ q @ q.T


def batch_residual(images, batch):
    """Per-image ||x - P x|| / ||x|| (0 for x = 0), P the projection onto the private ``batch``'s span (float64)."""
    flat = images.flatten(1).double()
    return (flat - batch_projection(images, batch)).norm(dim=1) / flat.norm(dim=1).clamp_min(1e-300)


def problem(batch_size=4, width=16, local=None):
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(6, 6), width=width, seed=0)
    images = torch.rand(batch_size, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(batch_size) % 4
    return model, images, labels, client_update(model, images, labels, local=local)


def attack(model, update, labels, **settings):
    plan = plan_labels("oracle", update, model, true_labels=labels)
    return Inversion(model, update, plan, AttackSettings(**settings), bounds=BOX, image_shape=(1, 6, 6))


def test_the_first_linear_layer_is_found_by_tracing_and_only_on_the_flattened_input():
    fcn = build_model("fcn", num_classes=4, in_channels=1, image_size=(6, 6), width=16)
    assert first_linear_weight(fcn, (1, 6, 6))[0] == "features.1.weight"
    lenet = build_model("lenet5", num_classes=4, in_channels=1, image_size=(32, 32))
    assert first_linear_weight(lenet, (1, 32, 32)) is None  # its first trainable layer is a convolution

    class Shuffled(nn.Module):  # a linear layer that receives the pixels reordered: not the input's span
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(36, 4)

        def forward(self, x):
            return self.fc(x.flatten(1).flip(1))

    assert first_linear_weight(Shuffled(), (1, 6, 6)) is None


@pytest.mark.parametrize("local", [None, LocalTraining(steps=3, batch_size=2, lr=0.1)], ids=["fedsgd", "fedavg"])
def test_the_true_batch_lies_in_the_row_space_and_other_images_do_not(local):
    model, images, _, update = problem(local=local)
    span = span_for_update("always", model, update.gradients, 4, (1, 6, 6))
    assert span.record() == {"layer": "features.1.weight", "rank": 4, "dimension": 36}
    assert torch.allclose(span.basis.T @ span.basis, torch.eye(4), atol=1e-5)  # orthonormal
    assert span.residual(images).max() < 1e-5  # every private image is in the span
    assert torch.allclose(span(span.coefficients(images)), images, atol=1e-5)  # and maps back onto itself
    other = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(7))
    assert span.residual(other).min() > 0.3  # a 4-dimensional span of a 36-dimensional space misses them


def test_the_rank_is_that_of_the_gradient_capped_at_k():
    grad = torch.randn(10, 3) @ torch.randn(3, 20)  # rank 3
    assert row_space_basis(grad, max_rank=8).shape == (20, 3)
    assert row_space_basis(grad, max_rank=2).shape == (20, 2)
    with pytest.raises(ValueError, match="zero"):
        row_space_basis(torch.zeros(4, 5), 2)


def test_every_dummy_stays_in_the_span_during_a_boxed_attack():
    model, images, labels, update = problem()
    inversion = attack(model, update, labels, max_steps=30, lr=0.2, init="rand", span="always")
    result = inversion.run(progress=False, snapshot_every=1)
    assert len(result.snapshots) == 30 and result.span["rank"] == 4
    for _, _, dummies in [*result.snapshots, (0, 0, result.images)]:
        assert float(inversion.problem.span.residual(dummies).max()) < 1e-5
        assert float(batch_residual(dummies, images).max()) < SPAN_TOL  # against the batch itself


def test_the_map_from_coefficients_to_images_is_the_basis_scaled_by_sqrt_d_over_r():
    # D = 4 pixels, r = 2 orthonormal directions (1, 1, 0, 0)/√2 and (0, 0, 1, -1)/√2: s = √(D/r) = √2
    basis = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) / math.sqrt(2)
    span = FirstLayerSpan(basis, (1, 2, 2))
    assert span.scale == math.sqrt(4 / 2) and span.rank == 2
    coefficients = torch.tensor([[1.0, 2.0], [0.5, 0.0]])
    images = torch.tensor([[[[1.0, 1.0], [2.0, -2.0]]], [[[0.5, 0.5], [0.0, 0.0]]]])  # s (c1 v1 + c2 v2), by hand
    # a few float32 roundings of values up to 2: within 4 eps relative
    torch.testing.assert_close(span(coefficients), images, rtol=4 * EPS, atol=0)
    torch.testing.assert_close(span.coefficients(images), coefficients, rtol=4 * EPS, atol=4 * EPS)


@pytest.mark.parametrize("batched", ["never", "always"], ids=["sequential", "batched"])
def test_in_the_span_every_step_ends_in_the_pixel_box_where_the_box_and_the_span_agree(batched):
    """Two one-pixel images span two pixel axes: there the span's nearest point to the boxed dummies is in the
    box, so the boxed attack's dummies must be, after every step of every restart (run one after another or
    batched); unboxed, the same steps leave it."""
    images = torch.zeros(2, 1, 6, 6)
    images[0, 0, 0, 0], images[1, 0, 3, 4] = 0.7, 0.4
    labels = torch.tensor([0, 1])
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(6, 6), width=16, seed=0)
    update = client_update(model, images, labels)
    # signed Adam with lr 5 moves every coefficient by 5 in the first step, a pixel by at least 5·s/√2 = 15
    settings = {
        "max_steps": 3,
        "lr": 5.0,
        "schedule": "none",
        "init": "rand",
        "span": "always",
        "restarts": 2,
        "batch_restarts": batched,
    }
    for boxed in (True, False):
        result = attack(model, update, labels, boxed=boxed, **settings).run(progress=False, snapshot_every=1)
        dummies = torch.stack([snapshot for _, _, snapshot in result.snapshots])
        assert len(result.snapshots) == 6 and float(batch_residual(dummies.flatten(0, 1), images).max()) < SPAN_TOL
        inside = bool(((dummies >= -4 * EPS) & (dummies <= 1 + 4 * EPS)).all())
        assert inside == boxed


def test_the_boxed_projection_in_the_span_is_the_spans_nearest_point_to_the_clamped_dummies():
    model, images, labels, update = problem()
    inversion = attack(model, update, labels, span="always")
    leaf = inversion.problem.span.coefficients(3 * torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(5)))
    before = inversion.problem.images(leaf)
    assert float(((before < 0) | (before > 1)).float().mean()) > 0.3  # far out of the box [0, 1]
    inversion.problem.project(leaf)
    after = inversion.problem.images(leaf)
    expected = batch_projection(before.clamp(0, 1), images)  # clamp to the box, then back onto the span
    error = (after.flatten(1).double() - expected).norm(dim=1) / expected.norm(dim=1)
    assert float(error.max()) < SPAN_TOL
    assert float(batch_residual(after, images).max()) < SPAN_TOL


def test_the_true_batch_is_a_fixed_point_of_the_span_parameterisation():
    model, images, labels, update = problem()
    inversion = attack(model, update, labels, objective="l2", span="always")
    truth = inversion.problem.span.coefficients(images).requires_grad_(True)
    loss = inversion.problem.match(inversion.problem.images(truth), None)
    (grad,) = torch.autograd.grad(loss, truth)
    assert float(loss.detach()) < 1e-10 and float(grad.norm()) < 1e-6
    moved = truth.detach() + 0.05 * torch.randn(truth.shape, generator=torch.Generator().manual_seed(3))
    moved.requires_grad_(True)
    (away,) = torch.autograd.grad(inversion.problem.match(inversion.problem.images(moved), None), moved)
    assert float(away.norm()) > 1e3 * float(grad.norm())  # the zero gradient is the truth's, not everywhere's


def test_the_span_attack_beats_the_unconstrained_one_at_the_same_budget():
    model, images, labels, update = problem(batch_size=4, width=32)
    errors = {}
    for mode in ("never", "always"):
        result = attack(model, update, labels, max_steps=150, lr=0.1, init="rand", span=mode).run(progress=False)
        errors[mode] = float(((result.images - images) ** 2).mean())  # labels fixed and sorted as the batch's
    assert errors["always"] < 0.5 * errors["never"]  # measured: 0.011 against 0.035


def test_auto_uses_the_span_only_where_it_applies_and_always_says_why_not():
    model, _, _, update = problem(batch_size=4, width=3)  # 3 outputs cannot span 4 images
    assert span_for_update("auto", model, update.gradients, 4, (1, 6, 6)) is None
    with pytest.raises(ValueError, match="3 outputs, fewer than the batch size 4"):
        span_for_update("always", model, update.gradients, 4, (1, 6, 6))
    lenet = build_model("lenet5", num_classes=4, in_channels=1, image_size=(32, 32))
    lenet_update = client_update(lenet, torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))
    assert span_for_update("auto", lenet, lenet_update.gradients, 2, (1, 32, 32)) is None
    with pytest.raises(ValueError, match="not a linear layer"):
        span_for_update("always", lenet, lenet_update.gradients, 2, (1, 32, 32))
    model, _, _, update = problem()
    assert span_for_update("never", model, update.gradients, 4, (1, 6, 6)) is None
    assert span_for_update("auto", model, update.gradients, 4, (1, 6, 6)).rank == 4
