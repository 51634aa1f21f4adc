"""The attack's lean convolution: the values and gradients of every order of F.conv2d, one term fewer."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from inversion.attack import AttackSettings, Inversion, plan_labels
from inversion.attack import conv as lean
from inversion.attack.conv import LeanConv2d, multiply_adds, use_lean_convolutions
from inversion.fl import LocalTraining, client_update
from inversion.models import build_model


@pytest.fixture
def every_size(monkeypatch):
    """Small test convolutions take the lean path too."""
    monkeypatch.setattr(lean, "MIN_MULTIPLY_ADDS", 0)


def _net(first: dict, second: dict, size: int) -> nn.Module:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(4, 6, **first), nn.Tanh(), nn.Conv2d(6, 6, **second), nn.Tanh(), nn.Flatten())
    features = body(torch.zeros(1, 4, size, size)).shape[1]
    return nn.Sequential(body, nn.Linear(features, 3))


def _matching_gradients(model: nn.Module, x0: Tensor, *, weights_too: bool = False):
    """Forward value, first-order parameter gradients and the double-backward gradient of a matching loss."""
    x = x0.clone().requires_grad_(True)
    params = list(model.parameters())
    out = model(x)
    grads = torch.autograd.grad(F.cross_entropy(out, torch.tensor([0, 2, 1])), params, create_graph=True)
    target = [torch.ones_like(g) for g in grads]
    loss = 1 - sum((g * t).sum() for g, t in zip(grads, target)) / torch.sqrt(sum((g * g).sum() for g in grads))
    wanted = [x, *params] if weights_too else [x]
    return out.detach(), [g.detach() for g in grads], torch.autograd.grad(loss, wanted)


CASES = {
    "stride 1, padding 1": ({"kernel_size": 3, "padding": 1}, {"kernel_size": 3, "padding": 1}, 8),
    "stride 2 on an odd size (output padding), no bias": (
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 5, "stride": 2, "padding": 2, "bias": False},
        9,
    ),
    "groups and dilation": (
        {"kernel_size": 3, "padding": 2, "dilation": 2, "groups": 2},
        {"kernel_size": (3, 1), "padding": (1, 0), "groups": 3},
        7,
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("weights_too", [False, True], ids=["dummies", "dummies and weights"])
def test_values_and_gradients_of_every_order_equal_conv2d(every_size, case, weights_too):
    model = _net(*CASES[case])
    x0 = torch.randn(3, 4, CASES[case][2], CASES[case][2], generator=torch.Generator().manual_seed(1))
    lean_model = copy.deepcopy(model)
    assert use_lean_convolutions(lean_model) == 2
    expected, got = (
        _matching_gradients(model, x0, weights_too=weights_too),
        _matching_gradients(lean_model, x0, weights_too=weights_too),
    )
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
    for first, second in zip(got[1] + list(got[2]), expected[1] + list(expected[2])):
        torch.testing.assert_close(first, second, rtol=1e-4, atol=1e-6)


def test_double_backward_skips_exactly_the_weight_term(every_size):
    """Stride 1, same padding: the saved FLOPs are those of the second layer's weight-gradient convolution."""
    model = _net({"kernel_size": 3, "padding": 1}, {"kernel_size": 3, "padding": 1}, 8)
    lean_model = copy.deepcopy(model)
    use_lean_convolutions(lean_model)
    flops = []
    for net in (model, lean_model):
        x = torch.randn(3, 4, 8, 8, requires_grad=True)
        grads = torch.autograd.grad(
            F.cross_entropy(net(x), torch.tensor([0, 2, 1])), list(net.parameters()), create_graph=True
        )
        with FlopCounterMode(display=False) as counter:
            torch.autograd.grad(sum((g * g).sum() for g in grads), [x])
        flops.append(counter.get_total_flops())
    batch, channels_in, channels_out, kernel, pixels = 3, 6, 6, 9, 64
    assert flops[0] - flops[1] == 2 * batch * channels_out * channels_in * kernel * pixels


def test_only_plain_zero_padded_convolutions_turn(monkeypatch):
    class Custom(nn.Conv2d):
        pass

    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.Conv2d(2, 2, 3, padding="same"),
        nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
        Custom(2, 2, 3),
        nn.Linear(2, 2),
    )
    plain = copy.deepcopy(model)
    assert use_lean_convolutions(model) == 1
    assert [type(m) for m in model] == [LeanConv2d, nn.Conv2d, nn.Conv2d, Custom, nn.Linear]
    monkeypatch.delattr(torch._C, "_will_engine_execute_node")  # a torch without it: nothing turns
    assert use_lean_convolutions(plain) == 0 and type(plain[0]) is nn.Conv2d


def test_small_convolutions_keep_conv2d(monkeypatch):
    layer = nn.Conv2d(3, 4, 3, padding=1, stride=2)
    use_lean_convolutions(layer)
    x = torch.randn(2, 3, 9, 9)
    assert multiply_adds(x, layer) == 2 * 4 * 3 * 9 * 5 * 5
    calls = []
    monkeypatch.setattr(lean, "conv2d", lambda *args: calls.append(args) or F.conv2d(*args))
    monkeypatch.setattr(lean, "MIN_MULTIPLY_ADDS", multiply_adds(x, layer) + 1)
    layer(x)
    assert not calls
    monkeypatch.setattr(lean, "MIN_MULTIPLY_ADDS", multiply_adds(x, layer))
    layer(x)
    assert len(calls) == 1


@pytest.mark.parametrize("local", [None, LocalTraining(steps=2, batch_size=2, lr=0.1)], ids=["FedSGD", "FedAvg"])
def test_the_attack_is_unchanged_by_its_lean_convolutions(every_size, monkeypatch, local):
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=(28, 28))
    generator = torch.Generator().manual_seed(3)
    images, labels = torch.randn(4, 1, 28, 28, generator=generator), torch.tensor([1, 4, 4, 7])
    update = client_update(model, images, labels, local=local)
    runs = []
    for turn in (True, False):
        if not turn:
            monkeypatch.setattr("inversion.attack.optimize.use_lean_convolutions", lambda model: 0)
        attack = Inversion(
            model,
            update,
            plan_labels("oracle", update, model, true_labels=labels),
            AttackSettings(max_steps=6, restarts=2, checkpoint_every=0, span="never"),
            bounds=(torch.full((1, 1, 1, 1), -3.0), torch.full((1, 1, 1, 1), 3.0)),
            priors={"tv": 1e-4},
        )
        assert any(type(m) is LeanConv2d for m in attack.problem.model.modules()) == turn
        runs.append(attack.run(progress=False))
    assert all(type(m) is not LeanConv2d for m in model.modules())  # the caller's model is untouched
    assert runs[0].restart_losses == pytest.approx(runs[1].restart_losses, rel=1e-4)
    torch.testing.assert_close(runs[0].images, runs[1].images, rtol=1e-3, atol=1e-4)
