"""Updates from code this project did not write: gradients, weight deltas and states before/after, told apart by
the sign of the final layer's bias gradient where the maths allows."""

import dataclasses

import pytest
import torch

from inversion.fl import LocalTraining, SharedUpdate, client_update, local_training_delta
from inversion.models import build_model

K, C = 3, 10  # K < C/2: a gradient has at most K negative bias entries, a delta at least C - K = 7


def problem():
    model = build_model("fcn", num_classes=C, in_channels=1, image_size=(6, 6), width=16, seed=0)
    images = torch.rand(K, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    return model, images, torch.tensor([1, 4, 4])


def test_a_gradient_is_taken_and_a_delta_passed_as_a_gradient_is_refused():
    model, images, labels = problem()
    gradients = client_update(model, images, labels).gradients
    assert int((gradients["fc.bias"] < 0).sum()) <= K  # the bound the check rests on (the 2 classes present)
    update = SharedUpdate.from_gradients(gradients, K, model=model, dataset="mnist")
    assert update.kind == "fedsgd" and torch.equal(update.gradients["fc.bias"], gradients["fc.bias"])
    delta = {name: -0.1 * g for name, g in gradients.items()}  # one SGD step's delta: the opposite sign
    with pytest.raises(
        ValueError, match=r"^these are not the gradients .* K=3 samples: 8 of the final layer's 10 bias"
    ):
        SharedUpdate.from_gradients(delta, K, model=model, dataset="mnist")
    assert SharedUpdate.from_gradients(delta, K, model=model, dataset="mnist", check_sign=False).kind == "fedsgd"


def test_a_weight_delta_and_states_before_and_after_give_the_update_the_fedavg_client_shares():
    model, images, labels = problem()
    local = LocalTraining(steps=3, batch_size=1, lr=0.1)
    shared = client_update(model, images, labels, local=local, dataset="mnist")
    public = dataclasses.replace(shared.meta, notes={})  # the simulated client's own notes aside
    delta = local_training_delta(model, images, labels, local)
    update = SharedUpdate.from_weight_delta(delta, K, local=local, model=model, dataset="mnist")
    assert update.kind == "fedavg" and update.meta == public
    for name, tensor in shared.gradients.items():
        assert torch.equal(update.gradients[name], tensor), name
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    after = {name: before[name] + delta[name] for name in before}
    from_states = SharedUpdate.from_states(before, after, K, local=local, model=model, dataset="mnist")
    assert from_states.meta == public and set(from_states.gradients) == set(shared.gradients)
    for name, tensor in shared.gradients.items():  # (before + delta) - before: float32 rounding of the sum only
        assert torch.allclose(from_states.gradients[name], tensor, rtol=0, atol=2 * torch.finfo(torch.float32).eps)
    gradients = client_update(model, images, labels).gradients
    with pytest.raises(ValueError, match=r"^this is not the weight delta .* 8 of the final layer's 10 bias changes"):
        SharedUpdate.from_weight_delta(gradients, K, local=local, model=model, dataset="mnist")


def test_opacus_module_prefix_is_dropped():
    model, images, labels = problem()
    gradients = client_update(model, images, labels).gradients
    update = SharedUpdate.from_gradients({f"_module.{n}": g for n, g in gradients.items()}, K, model=model)
    assert set(update.gradients) == set(gradients)
    update.check_compatible(model)
