"""Image priors: hand-computed values and gradients, hooks, seeded augmentations, weighted combination."""

from __future__ import annotations

import math

import kornia
import pytest
import torch
from torch import nn

from priors import (
    PRIOR_NAMES,
    AugmentationConsistency,
    BNStatistics,
    ImagePriors,
    L2Norm,
    TotalVariation,
    augment,
    bn_statistics_loss,
    build_priors,
    l2_norm,
    total_variation,
)


def _bn_pre_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) for m in model.modules())


# --- total variation -------------------------------------------------------------------------------


def test_tv_hand_case():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # horizontal |1-0|, |4-2| -> 1.5; vertical |2-0|, |4-1| -> 2.5
    assert total_variation(x).item() == 4.0
    assert TotalVariation()(x).item() == 4.0


def test_tv_constant_image_is_zero_with_zero_gradient():
    x = torch.full((3, 2, 5, 4), 0.7, requires_grad=True)
    value = total_variation(x)
    value.backward()
    assert value.item() == 0.0
    assert torch.count_nonzero(x.grad) == 0


def test_tv_gradient_hand_case():
    # horizontal diffs 3, -2, 0, 3 (mean |.| = 2, weight 1/4 each); vertical 2, -1, 4 (mean 7/3, weight 1/3 each)
    x = torch.tensor([[[[0.0, 3.0, 1.0], [2.0, 2.0, 5.0]]]], requires_grad=True)
    value = total_variation(x)
    value.backward()
    assert value.item() == pytest.approx(2 + 7 / 3)
    expected = torch.tensor([[[[-7 / 12, 5 / 6, -7 / 12], [1 / 3, -7 / 12, 7 / 12]]]])
    torch.testing.assert_close(x.grad, expected)


def test_tv_multichannel_batch_is_the_mean_over_every_element():
    # image 0 channel 0: the hand case (h 1, 2; v 2, 3); everything else constant -> 8 horizontal, 8 vertical diffs
    x = torch.zeros(2, 2, 2, 2)
    x[0, 0] = torch.tensor([[0.0, 1.0], [2.0, 4.0]])
    assert total_variation(x).item() == pytest.approx(3 / 8 + 5 / 8)


def test_tv_matches_loop_reference():
    x = torch.randn(3, 2, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    b, c, h, w = x.shape
    horizontal = sum(
        abs(x[i, k, r, s + 1] - x[i, k, r, s])
        for i in range(b)
        for k in range(c)
        for r in range(h)
        for s in range(w - 1)
    ) / (b * c * h * (w - 1))
    vertical = sum(
        abs(x[i, k, r + 1, s] - x[i, k, r, s])
        for i in range(b)
        for k in range(c)
        for r in range(h - 1)
        for s in range(w)
    ) / (b * c * (h - 1) * w)
    assert total_variation(x).item() == pytest.approx((horizontal + vertical).item(), rel=1e-12)


def test_tv_rejects_too_small_images():
    with pytest.raises(ValueError, match="H, W >= 2"):
        total_variation(torch.zeros(1, 1, 1, 5))


# --- l2 norm -------------------------------------------------------------------------------------------


def test_l2_hand_case_and_gradient():
    x = torch.tensor([[[3.0, 4.0]], [[0.0, 1.0]]], requires_grad=True)  # norms 5 and 1
    value = l2_norm(x)
    value.backward()
    assert value.item() == 3.0
    assert L2Norm()(x).item() == 3.0
    torch.testing.assert_close(x.grad, torch.tensor([[[3 / 10, 4 / 10]], [[0.0, 1 / 2]]]))


def test_l2_is_per_image_not_whole_batch():
    x = torch.zeros(2, 1, 2, 2)
    x[0, 0, 0, 0], x[1, 0, 1, 1] = 6.0, 8.0  # per-image norms 6, 8 (the whole batch's norm would be 10)
    assert l2_norm(x).item() == 7.0


# --- batch-norm statistics ----------------------------------------------------------------------------


def _conv_bn(running_mean, running_var) -> nn.Sequential:
    """1x1 conv scaling the single input channel by 2 and -1, then BatchNorm2d(2) with the given statistics."""
    conv = nn.Conv2d(1, 2, kernel_size=1, bias=False)
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        bn.running_mean.copy_(torch.tensor(running_mean))
        bn.running_var.copy_(torch.tensor(running_var))
    return nn.Sequential(conv, bn).eval()


def _pixels(requires_grad: bool = True) -> torch.Tensor:
    # pixels {1, 3, 5, 7}: mean 4, biased variance 5 -> channel 0 (x2): mean 8, var 20; channel 1 (x-1): -4, 5
    return torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]], requires_grad=requires_grad)


def test_bn_statistics_loss_hand_case_bn1d():
    features = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # mean (2, 4), biased var (1, 4)
    value = bn_statistics_loss(features, torch.zeros(2), torch.zeros(2))
    assert value.item() == pytest.approx(math.sqrt(20) + math.sqrt(17))


def test_bn_prior_hand_value_and_gradient():
    model = _conv_bn([7.0, -4.0], [18.0, 4.0])
    x = _pixels()
    with BNStatistics(model) as prior:
        model(x)
        value = prior.value()
    # ||(8, -4) - (7, -4)|| + ||(20, 5) - (18, 4)|| = 1 + sqrt(5)
    assert value.item() == pytest.approx(1 + math.sqrt(5))
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bn_prior_train_mode_uses_batch_and_pre_update_running_stats():
    model = _conv_bn([7.0, -4.0], [18.0, 4.0]).train()
    with BNStatistics(model) as prior:
        model(_pixels())
        value = prior.value()
    assert not torch.equal(model[1].running_mean, torch.tensor([7.0, -4.0]))  # the forward did update them
    assert value.item() == pytest.approx(1 + math.sqrt(5))


def test_bn_prior_zero_when_batch_matches_running_stats():
    model = _conv_bn([8.0, -4.0], [20.0, 5.0])
    x = _pixels()
    with BNStatistics(model) as prior:
        model(x)
        value = prior.value()
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    (grad,) = torch.autograd.grad(value, x)
    assert torch.isfinite(grad).all()


def test_bn_prior_sums_layers_and_reads_only_the_last_forward():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(12)).eval()
    with torch.no_grad():
        for bn, size in ((model[1], 3), (model[4], 12)):
            bn.running_mean.uniform_(-1, 1, generator=torch.Generator().manual_seed(size))
            bn.running_var.uniform_(0.5, 2, generator=torch.Generator().manual_seed(size + 1))
    gen = torch.Generator().manual_seed(0)
    first, second = torch.randn(4, 2, 4, 4, generator=gen), torch.randn(4, 2, 4, 4, generator=gen)
    features1 = model[0](second)
    features2 = model[3](model[2](model[1](features1)))
    expected = bn_statistics_loss(features1, model[1].running_mean, model[1].running_var) + bn_statistics_loss(
        features2, model[4].running_mean, model[4].running_var
    )
    with BNStatistics(model) as prior:
        model(first)
        model(second)
        torch.testing.assert_close(prior.value(), expected)


def test_bn_prior_errors_and_hook_removal():
    with pytest.raises(ValueError, match="the 'bn' prior does not apply: the model has no batch-norm layers"):
        BNStatistics(nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU()))
    model = _conv_bn([0.0, 0.0], [1.0, 1.0])
    prior = BNStatistics(model)
    assert _bn_pre_hooks(model) == 2  # the reset hook on the model, the recorder on the BN layer
    with pytest.raises(RuntimeError, match="run the model's forward"):
        prior.value()
    model(_pixels())
    prior.value()
    prior.remove()
    assert _bn_pre_hooks(model) == 0
    model(_pixels())
    with pytest.raises(RuntimeError, match="removed"):
        prior.value()
    with BNStatistics(model):
        assert _bn_pre_hooks(model) == 2
    assert _bn_pre_hooks(model) == 0


# --- augmentation ----------------------------------------------------------------------------------------


def test_augment_exact_shift_and_flip():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    torch.testing.assert_close(augment(x, (1, 0)), torch.tensor([[[[0.0, 0, 1, 2], [0, 4, 5, 6], [0, 8, 9, 10]]]]))
    torch.testing.assert_close(augment(x, (0, -1)), torch.tensor([[[[4.0, 5, 6, 7], [8, 9, 10, 11], [0, 0, 0, 0]]]]))
    torch.testing.assert_close(
        augment(x, (0, 0), flip=True), torch.tensor([[[[3.0, 2, 1, 0], [7, 6, 5, 4], [11, 10, 9, 8]]]])
    )
    torch.testing.assert_close(
        augment(x, (1, 0), flip=True), torch.tensor([[[[2.0, 1, 0, 0], [6, 5, 4, 0], [10, 9, 8, 0]]]])
    )
    with pytest.raises(ValueError, match="smaller than the image"):
        augment(x, (4, 0))


def test_augment_agrees_with_kornia_translate():
    x = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    for dx, dy in ((2, -1), (-2, 2), (0, 1)):
        reference = kornia.geometry.transform.translate(x, torch.tensor([[float(dx), float(dy)]] * 2))
        torch.testing.assert_close(augment(x, (dx, dy)), reference, atol=1e-5, rtol=0)


def _weighted_sum(seed: int = 7):
    weights = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
    return lambda z: (z * weights).sum()


def test_augmentation_consistency_seeded_reproducible_and_global_rng_untouched():
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    prior, match = AugmentationConsistency(max_shift=2, flip=True, copies=2), _weighted_sum()
    rng_state = torch.get_rng_state()
    values = [prior(x, match, torch.Generator().manual_seed(seed)) for seed in (0, 0, 1, 2, 3)]
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.equal(values[0], values[1])
    assert len({v.item() for v in values[1:]}) > 1
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()  # a checkpoint of the generator resumes the same draws
    first = prior(x, match, generator)
    assert torch.equal(prior(x, match, torch.Generator().set_state(state)), first)


def test_augmentation_consistency_averages_match_over_drawn_augmentations():
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    seen = []
    match = _weighted_sum()

    def recording(z):
        seen.append(z)
        return match(z)

    value = AugmentationConsistency(max_shift=1, flip=True, copies=3)(x, recording, torch.Generator().manual_seed(0))
    assert len(seen) == 3
    candidates = [augment(x, (dx, dy), f) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for f in (False, True)]
    assert all(any(torch.equal(z, c) for c in candidates) for z in seen)
    torch.testing.assert_close(value, sum(match(z) for z in seen) / 3)


def test_augmentation_consistency_flip_invariant_match_is_exact():
    x = torch.randint(-5, 6, (2, 3, 4, 4), generator=torch.Generator().manual_seed(3)).float()
    prior = AugmentationConsistency(max_shift=0, flip=True, copies=4)
    for seed in range(3):
        assert prior(x, lambda z: z.sum(), torch.Generator().manual_seed(seed)).item() == x.sum().item()


def test_augmentation_consistency_without_flip_is_never_flipped():
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    seen = []
    AugmentationConsistency(max_shift=0, flip=False, copies=5)(
        x, lambda z: seen.append(z) or z.sum(), torch.Generator().manual_seed(0)
    )
    assert len(seen) == 5 and all(torch.equal(z, x) for z in seen)


def test_augmentation_consistency_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_shift"):
        AugmentationConsistency(max_shift=-1)
    with pytest.raises(ValueError, match="copies"):
        AugmentationConsistency(copies=0)


# --- combination ---------------------------------------------------------------------------------------


def test_image_priors_weighted_total_and_terms():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]], requires_grad=True)  # tv 4, l2 sqrt(21)
    priors = build_priors({"tv": 0.5, "l2": 2.0, "bn": 0.0, "augment": 0})
    assert list(priors.priors) == ["tv", "l2"]
    total, terms = priors(x)
    assert terms == {"tv": pytest.approx(4.0), "l2": pytest.approx(math.sqrt(21))}
    assert total.item() == pytest.approx(0.5 * 4.0 + 2.0 * math.sqrt(21))
    total.backward()
    assert torch.isfinite(x.grad).all()


def test_image_priors_bn_read_before_augment():
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 2)).eval()
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
    priors = build_priors({"tv": 1e-1, "bn": 0.25, "augment": 3.0}, model=model)
    assert list(priors.priors) == ["tv", "bn", "augment"]
    match = lambda z: model(z).square().mean()  # noqa: E731
    model(x)
    total, terms = priors(x, match=match, generator=torch.Generator().manual_seed(1))
    bn_expected = bn_statistics_loss(model[0](x), model[1].running_mean, model[1].running_var)
    augment_expected = AugmentationConsistency()(x, match, torch.Generator().manual_seed(1))
    assert terms["bn"] == pytest.approx(bn_expected.item())
    assert terms["augment"] == pytest.approx(augment_expected.item())
    expected = 1e-1 * total_variation(x) + 0.25 * bn_expected + 3.0 * augment_expected
    assert total.item() == pytest.approx(expected.item())
    (grad,) = torch.autograd.grad(total, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs match= and generator="):
        priors(x)
    priors.remove()
    assert _bn_pre_hooks(model) == 0


def test_image_priors_empty_and_hand_built():
    x = torch.ones(1, 1, 2, 2)
    total, terms = build_priors({"tv": 0.0})(x)
    assert total.item() == 0.0 and terms == {}
    custom = ImagePriors({"l2": (1.5, L2Norm()), "tv": (1.0, TotalVariation())})
    assert list(custom.priors) == ["tv", "l2"]  # evaluated in PRIOR_NAMES order
    assert custom(x)[0].item() == pytest.approx(1.5 * 2.0)


def test_build_priors_errors():
    with pytest.raises(ValueError, match=r"unknown prior\(s\) \['tvv'\].*'tv', 'l2', 'bn', 'augment'"):
        build_priors({"tvv": 1.0})
    for bad in (-1e-4, float("nan"), float("inf"), "abc"):
        with pytest.raises(ValueError, match="the weight of prior 'l2'"):
            build_priors({"l2": bad})
    with pytest.raises(ValueError, match="needs the model"):
        build_priors({"bn": 1.0})
    with pytest.raises(ValueError, match="the 'bn' prior does not apply"):
        build_priors({"bn": 1.0}, model=nn.Linear(2, 2))
    assert build_priors({"bn": 0.0}, model=nn.Linear(2, 2)).priors == {}
    assert PRIOR_NAMES == ("tv", "l2", "bn", "augment")
