"""restore_from_update hands each registered label method what it declares it needs (final layer, auxiliary data,
or the whole update), whatever its name."""

import numpy as np
import pytest
import torch
from torch import nn

from inversion.fl.client import client_update
from inversion.fl.local import LocalTraining
from inversion.models import final_layer
from inversion.restore import needs_auxiliary, restore_from_update
from inversion.restore.auxiliary import AuxiliaryData, softmax_outputs
from label_restore import register_method, unregister_method
from label_restore.result import make_result

LABELS = torch.tensor([2, 0, 2, 1])  # counts [1, 1, 2]


def tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def tiny_aux():
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(3).repeat_interleave(4)
    return AuxiliaryData(torch.randn(12, 1, 2, 2, generator=gen, dtype=torch.float64), labels, {"source": "random"})


def problem(**client):
    model, aux = tiny_model(), tiny_aux()
    return model, aux, client_update(model, aux.images[LABELS * 4], LABELS, **client)


class Recorder:
    """A label method that records what it was called with and answers the true counts [1, 1, 2]."""

    def __init__(self, name):
        self.name, self.calls = name, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        counts = np.array([1, 1, 2])
        return make_result(self.name, counts, counts, counts > 0, 4)


@pytest.fixture
def registered():
    """Register Recorder methods for one test: ``registered(name, needs)`` -> the recorder."""
    names = []

    def register(name, needs):
        recorder = Recorder(name)
        register_method(name, recorder, needs=needs)
        names.append(name)
        return recorder

    yield register
    for name in names:
        unregister_method(name)


def test_a_final_layer_method_gets_the_final_layer_and_k(registered):
    model, _, update = problem()
    method = registered("test_final", "final_layer")
    assert restore_from_update("test_final", update, model, option=7).counts.tolist() == [1, 1, 2]
    ((args, kwargs),) = method.calls
    grad_weight, grad_bias = update.final_layer_gradients(model)
    layer = final_layer(model)
    for got, expected in zip(args, (grad_weight, grad_bias, layer.weight, layer.bias)):
        assert torch.equal(got, expected)
    assert args[4] == 4 and kwargs == {"option": 7}


def test_an_auxiliary_method_gets_the_final_layer_and_the_auxiliary_statistics(registered):
    model, aux, update = problem()
    method = registered("test_aux_stats", "auxiliary")
    with pytest.raises(ValueError, match="label method 'test_aux_stats' needs the server's labelled auxiliary data"):
        restore_from_update("test_aux_stats", update, model)
    result = restore_from_update("test_aux_stats", update, model, aux=aux, option=7)
    assert result.counts.tolist() == [1, 1, 2] and result.details["aux"] == {"source": "random"}
    ((args, kwargs),) = method.calls  # FedSGD: one call
    grad_weight, grad_bias = update.final_layer_gradients(model)
    layer = final_layer(model)
    for got, expected in zip(args, (grad_weight, grad_bias, layer.weight, layer.bias)):
        assert torch.equal(got, expected)
    assert args[4] == 4
    assert torch.equal(kwargs.pop("aux_probs"), softmax_outputs(model, aux.images))
    assert torch.equal(kwargs.pop("aux_labels"), aux.labels)
    assert kwargs == {"option": 7}


def test_an_auxiliary_method_on_a_fedavg_update_is_run_again_on_simulated_clients(registered):
    model, aux, update = problem(local=LocalTraining(steps=2, batch_size=2, lr=0.1))
    method = registered("test_aux_fedavg", "auxiliary")
    result = restore_from_update("test_aux_fedavg", update, model, aux=aux)
    assert result.method == "test_aux_fedavg" and result.counts.tolist() == [1, 1, 2]
    assert result.details["simulations"] >= 1 and len(method.calls) == 1 + 1  # the answer repeats: one round
    rows = method.calls[1][1]
    assert rows["aux_probs"].shape[0] == rows["aux_labels"].shape[0] > 0  # the simulated clients' softmax rows


def test_an_update_method_gets_the_update_the_model_and_k(registered):
    model, aux, update = problem()
    method = registered("test_update", "update")
    assert restore_from_update("test_update", update, model, option=7).labels.tolist() == [0, 1, 2, 2]
    assert method.calls == [((update, model), {"batch_size": 4, "option": 7})]
    with pytest.raises(ValueError, match="'test_update' does not read it"):
        restore_from_update("test_update", update, model, aux=aux)
    register_method("test_update", lambda update, model, batch_size: [0, 1, 2, 2], needs="update", overwrite=True)
    with pytest.raises(TypeError, match="'test_update' returned a list, not a RestorationResult"):
        restore_from_update("test_update", update, model)


def test_needs_auxiliary_reads_the_registry(registered):
    assert needs_auxiliary("aux") and not needs_auxiliary("ilrg")
    assert not any(needs_auxiliary(mode) for mode in ("oracle", "joint", "shared", "no_such_method"))
    registered("test_needs", "auxiliary")
    assert needs_auxiliary("test_needs")
