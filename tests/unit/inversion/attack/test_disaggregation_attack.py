"""The disaggregation attack: verified samples are the reconstruction, or fixed dummies beside gradient matching."""

import numpy as np
import pytest
import torch
from torch import nn

from inversion.attack import AttackSettings, attack_names, get_attack, plan_labels
from inversion.attack.disaggregation import disaggregate
from inversion.attack.disaggregation_attack import DisaggregationAttack, merge_labels
from inversion.config import InvertConfig, load_config
from inversion.config.presets import PRESET_DIR, load_preset
from inversion.fl import client_update
from inversion.fl.local import LocalTraining

SHAPE = (1, 4, 4)
EPS32 = torch.finfo(torch.float32).eps
# a vertex of the row space of float32 gradients (rounding eps32 relative, the first layer's singular values within a
# factor 2 of each other here), cast to float32 again: a few eps32 per pixel of [0, 1]
PIXEL_TOLERANCE = 8 * EPS32


def sparse_batch(seed: int, k: int = 3) -> torch.Tensor:
    """K images (K, 1, 4, 4) in [0, 1], each with 4 bright pixels where the others are 0."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(k, 16)
    pixels = torch.randperm(16, generator=generator)
    for i in range(k):
        images[i, pixels[4 * i : 4 * i + 4]] = 0.2 + 0.8 * torch.rand(4, generator=generator)
    return images.reshape(k, *SHAPE)


def fcn(seed: int = 4) -> nn.Module:
    """FCN-3 on 4x4 images, 10 classes: C > K, so that the final layer's input is checked too (with C = K its
    gradient has rank C - 1 < K and verification is weaker)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))


@pytest.fixture
def batch():
    """A model, its FedSGD update of 3 images with labels 0, 1, 2 (all 3 verify), the images and the labels."""
    model, images, labels = fcn(), sparse_batch(14), torch.tensor([0, 1, 2])
    return model, client_update(model, images, labels, mean=(0.0,), std=(1.0,)), images, labels


def build(model, update, labels, mode="oracle", settings=(), **options):
    plan = plan_labels(mode, update, model, true_labels=labels)
    chosen = AttackSettings(method="disaggregation", labels="oracle", max_steps=30, **dict(settings))
    return get_attack("disaggregation")(model, update, plan, chosen, device="cpu", **options)


def test_it_is_registered_and_a_config_naming_it_resolves():
    assert "disaggregation" in attack_names() and get_attack("disaggregation") is DisaggregationAttack
    assert load_preset("disaggregation").settings.method == "disaggregation"
    cfg = load_config(InvertConfig, PRESET_DIR / "default.yaml", ["attack.method=disaggregation"])
    assert cfg.attack.method == "disaggregation"


def test_a_fully_verified_batch_is_the_reconstruction_with_no_step(batch):
    model, update, images, labels = batch
    attack = build(model, update, labels)
    result = attack.run(progress=False)
    assert attack.route == "exact" and result.steps == 0 and result.restart_losses == [result.loss]
    assert sorted(result.labels.tolist()) == [0, 1, 2]
    # each dummy is the true image of its label (the labels are distinct)
    assert torch.allclose(result.images, images[torch.as_tensor(result.labels)], rtol=0, atol=PIXEL_TOLERANCE)
    assert abs(result.loss) <= 8 * EPS32  # the cosine distance of the true images' gradient to itself
    assert result.disaggregation["found"] == 3 and result.disaggregation["visible"] == 3
    assert result.disaggregation["labels"] == result.labels.tolist()


@pytest.mark.parametrize("batched", ["never", "always"])
def test_a_partial_recovery_keeps_the_verified_dummies_and_matches_the_rest(batch, batched):
    model, update, _, labels = batch
    found = disaggregate(update, model, max_programmes=2)
    assert found.found == 2  # the limit leaves one sample unverified
    settings = {"restarts": 2, "batch_restarts": batched}
    attack = build(model, update, labels, settings=settings, max_programmes=2)
    assert (attack.runner.batched is not None) == (batched == "always")
    start = attack.problem.fresh_restart(0).best_x
    with attack.problem.attached():
        start_loss = float(attack.problem.match(start, None, create_graph=False))
    result = attack.run(progress=False, snapshot_every=10)
    assert attack.route == "anchored" and result.steps == 2 * 30
    verified = found.images(SHAPE)
    assert torch.equal(result.images[:2], verified) and torch.equal(start[:2], verified)
    assert all(torch.equal(snapshot[:2], verified) for _, _, snapshot in result.snapshots)
    assert len(result.snapshots) == 2 * 3
    missing = sorted(set(labels.tolist()) - set(found.labels.tolist()))
    assert result.labels.tolist() == [*found.labels.tolist(), *missing]
    assert result.loss < start_loss  # the free dummy moved towards matching
    assert result.disaggregation["found"] == 2 and result.disaggregation["programmes"] == 2


def test_the_free_dummies_take_the_plans_labels_less_the_verified_ones():
    planned = torch.tensor([0, 1, 1, 2])
    assert merge_labels(planned, np.array([1]), None).tolist() == [1, 0, 1, 2]
    assert merge_labels(planned, np.array([2, 1, 0, 1]), None).tolist() == [2, 1, 0, 1]
    # the plan lacks the verified 3: of 0, 1, 2 the class the remaining gradient supports least (1) is dropped
    bias = np.array([-0.2, 0.1, -0.4, 0.0])
    assert merge_labels(planned, np.array([1, 3]), bias).tolist() == [1, 3, 0, 2]


def test_learnable_labels_and_fedavg_updates_are_refused_in_one_line(batch):
    model, update, images, labels = batch
    with pytest.raises(ValueError, match="^attack.method=disaggregation needs fixed labels .* label mode joint") as no:
        build(model, update, labels, mode="joint")
    local = LocalTraining(steps=2, batch_size=3, lr=0.1)
    fedavg = client_update(model, images, labels, mean=(0.0,), std=(1.0,), local=local)
    with pytest.raises(ValueError, match="at most one local epoch") as other:
        build(model, fedavg, labels)
    assert len(str(no.value).splitlines()) == len(str(other.value).splitlines()) == 1


def test_features_of_a_convolutional_model_become_targets_of_their_dummies():
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 10), nn.ReLU(), nn.Linear(10, 10)
    )
    images, labels = sparse_batch(14), torch.tensor([0, 1, 2])
    update = client_update(model, images, labels, mean=(0.0,), std=(1.0,))
    attack = build(model, update, labels, feature_weight=2.0)
    problem = attack.problem
    assert attack.route == "features" and attack.disaggregated.found == 3 and problem.settings.batch_restarts == "never"
    truth = images[torch.as_tensor(problem.plan.fixed)]  # the dummies' labels are the verified ones, in their order
    with problem.attached():
        total, matching, _ = problem.objective(truth, None)
        assert abs(float((total - matching).detach())) <= 2.0 * 8 * EPS32  # the true images have the recovered features
        zeros = torch.zeros_like(truth)
        total, matching, _ = problem.objective(zeros, None)
    features = model[:3](zeros).detach()  # the first linear layer's input for the dummies
    targets = model[:3](truth).detach()
    expected = ((features - targets).square().sum(1) / targets.square().sum(1)).mean()
    assert torch.allclose(total - matching, 2.0 * expected, rtol=8 * EPS32, atol=0)
    assert attack.run(progress=False).steps == 30
