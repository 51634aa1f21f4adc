"""The label method ``disaggregation``: the labels of the samples recovered exactly from the linear layers'
gradients, plus the fallback's counts for the rest; registered wherever a label method is accepted."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import inversion as gl
from inversion.attack import AttackSettings, label_modes
from inversion.config.schemas import RestoreSweep
from inversion.fl.local import LocalTraining
from inversion.fl.update import SharedUpdate
from inversion.restore import needs_auxiliary, restore_from_update
from inversion.restore.disaggregation import disaggregation
from label_restore import LabelRestoreInputError, available_methods, method_spec, register_method, unregister_method
from label_restore.result import make_result

MEAN, STD = (0.5,), (0.25,)
LABELS = torch.tensor([0, 2, 2])  # counts [1, 0, 2]
TRUTH = [1, 0, 2]


def tiny_model(seed=9, final_bias=True, batch_norm=False):
    """16 -> 12 -> 12 -> 3 ReLU network on 1x4x4 images (seed 9: the core recovers the batch below whole)."""
    torch.manual_seed(seed)
    middle = [nn.BatchNorm1d(12)] if batch_norm else []
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(16, 12),
        *middle,
        nn.ReLU(),
        nn.Linear(12, 12),
        nn.ReLU(),
        nn.Linear(12, 3, bias=final_bias),
    )


def sparse_batch(k=3, seed=9):
    """(k, 1, 4, 4) normalised images, nonnegative above the lower bound and sparse: sample i lights its own
    12 // k pixels, the last 4 pixels are lit at random; every other pixel sits exactly at the lower bound."""
    generator = torch.Generator().manual_seed(seed)
    raw, width = torch.zeros(k, 16), 12 // k
    for i in range(k):
        raw[i, width * i : width * (i + 1)] = 0.2 + 0.8 * torch.rand(width, generator=generator)
    raw[:, 12:] = torch.rand(k, 4, generator=generator) * (torch.rand(k, 4, generator=generator) < 0.5)
    return ((raw - MEAN[0]) / STD[0]).reshape(k, 1, 4, 4)


def gradients(model, images, labels):
    """The mean cross-entropy's gradient of every parameter (what a FedSGD client shares)."""
    model.zero_grad()
    nn.functional.cross_entropy(model(images), labels).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def problem(**model_options):
    model = tiny_model(**model_options)
    grads = gradients(model, sparse_batch(), LABELS)
    update = SharedUpdate.from_gradients(grads, len(LABELS), model=model, input_shape=(1, 4, 4), mean=MEAN, std=STD)
    return model, update


def test_a_batch_recovered_whole_gives_its_true_counts():
    model, update = problem()
    result = restore_from_update("disaggregation", update, model)
    assert result.method == "disaggregation" and result.details["recovered"] == 3
    assert result.counts.tolist() == TRUTH and result.raw_counts.tolist() == TRUTH
    assert result.labels.tolist() == [0, 2, 2] and result.present.tolist() == [True, False, True]
    assert sorted(result.details["recovered_labels"]) == [0, 2, 2]
    assert result.details["fallback"] == "ilrg" and result.details["fallback_counts"] == [0, 0, 0]
    assert result.details["fallback_refused"] is None and result.diagnostics == ()
    assert result.details["visible"] == 3 and result.details["programmes"] >= 3 and result.seconds > 0


def test_it_is_a_label_method_of_the_registry_the_configs_and_the_attack():
    assert "disaggregation" in available_methods() and method_spec("disaggregation").needs == "update"
    assert "disaggregation" in label_modes() and AttackSettings(labels="disaggregation").labels == "disaggregation"
    assert RestoreSweep(methods=["ilrg", "aux", "disaggregation"]).methods[-1] == "disaggregation"
    model, update = problem()
    reconstruction = gl.invert(update, model, labels="disaggregation", max_steps=1, progress=False)
    assert reconstruction.label_mode == "disaggregation" and reconstruction.labels.tolist() == [0, 2, 2]
    assert reconstruction.restoration.details["recovered"] == 3


@pytest.mark.parametrize("programmes", [0, 1])
def test_the_samples_not_recovered_get_the_fallbacks_counts(programmes):
    model, update = problem()
    result = restore_from_update("disaggregation", update, model, max_programmes=programmes)
    recovered = np.bincount(result.details["recovered_labels"], minlength=3)
    assert result.details["recovered"] == programmes  # one round, one programme: one sample each
    assert sum(result.details["fallback_counts"]) == 3 - programmes
    # iLRG is exact on this untrained network, on the whole batch and on the residual of the samples left
    assert (recovered + result.details["fallback_counts"]).tolist() == TRUTH == result.counts.tolist()
    assert result.present.tolist() == [True, False, True] and result.raw_counts.tolist() == TRUTH
    if programmes == 0:
        assert result.counts.tolist() == restore_from_update("ilrg", update, model).counts.tolist()


def test_a_refused_fallback_leaves_the_rest_to_the_class_the_residual_points_at():
    """iLRG refuses a final layer without bias: the residual's -grad_W row sums (post-ReLU embeddings) decide."""
    model = tiny_model(final_bias=False)
    labels = torch.tensor([1, 1, 1])
    update = SharedUpdate.from_gradients(
        gradients(model, sparse_batch(), labels), 3, input_shape=(1, 4, 4), mean=MEAN, std=STD
    )
    result = disaggregation(update, model, batch_size=3, max_programmes=0)
    assert result.counts.tolist() == [0, 3, 0] == result.details["fallback_counts"]
    assert "bias" in result.details["fallback_refused"]
    assert result.diagnostics[0].endswith("put in class 1, the residual's largest -grad_weight row sum")


def test_a_refused_fallback_with_a_bias_follows_minus_grad_bias():
    model, update = problem()

    def refusing(grad_weight, grad_bias, weight, bias, batch_size):
        raise LabelRestoreInputError("test refusal")

    register_method("test_refusing", refusing)
    try:
        result = disaggregation(update, model, batch_size=3, fallback="test_refusing", max_programmes=0)
    finally:
        unregister_method("test_refusing")
    # -grad_bias = mean(y - p) is positive for class 2 (two of three samples) and below zero for class 1
    assert result.counts.tolist() == [0, 0, 3] and result.details["fallback_refused"] == "test refusal"
    assert result.diagnostics[0].endswith(
        "(test refusal); they were all put in class 2, the residual's largest -grad_bias"
    )


def test_the_fallbacks_findings_are_passed_on():
    model, update = problem()

    def finding(grad_weight, grad_bias, weight, bias, batch_size):
        counts = np.array([0, batch_size, 0])
        return make_result("test_finding", counts, counts, counts > 0, batch_size, diagnostics=("a finding",))

    register_method("test_finding", finding)
    try:
        result = disaggregation(update, model, batch_size=3, fallback="test_finding", max_programmes=1)
    finally:
        unregister_method("test_finding")
    recovered = np.bincount(result.details["recovered_labels"], minlength=3)
    assert result.details["recovered"] == 1 and result.counts.tolist() == (recovered + np.array([0, 2, 0])).tolist()
    assert result.diagnostics == ("fallback test_finding on the 2 samples not recovered: a finding",)


def one_line_refusal(call, match):
    with pytest.raises(ValueError, match=match) as refused:
        call()
    assert "\n" not in str(refused.value)


def test_refusals_are_one_line():
    model, update = problem()
    local = LocalTraining(2, 3, 0.1)  # two local epochs of K=3
    fedavg = SharedUpdate.from_weight_delta(
        {n: -0.1 * g for n, g in update.gradients.items()}, 3, local=local, meta=update.meta
    )
    one_line_refusal(lambda: restore_from_update("disaggregation", fedavg, model), "at most one local epoch")
    partial = dataclasses.replace(update, gradients={n: g for n, g in update.gradients.items() if n != "1.weight"})
    one_line_refusal(lambda: restore_from_update("disaggregation", partial, model), "no gradient of '1.weight'")
    normed = tiny_model(batch_norm=True)
    normed_update = SharedUpdate.from_gradients(
        gradients(normed, sparse_batch(), LABELS), 3, input_shape=(1, 4, 4), mean=MEAN, std=STD
    )
    one_line_refusal(lambda: restore_from_update("disaggregation", normed_update, normed), "batch norm")
    for fallback in ("aux", "disaggregation", "nope"):
        one_line_refusal(
            lambda fallback=fallback: restore_from_update("disaggregation", update, model, fallback=fallback),
            rf"fallback '{fallback}' is not a label method that reads the final layer alone; choose one of ilrg",
        )


def test_disaggregation_aux_gives_the_samples_left_to_aux_with_the_servers_auxiliary_data():
    """With nothing recovered (no programme) the residual is the whole batch's gradient, so ``disaggregation_aux``
    counts what ``aux`` restores from the update; with everything recovered, aux adds nothing."""
    model, update = problem()
    generator = torch.Generator().manual_seed(4)
    aux = gl.AuxiliaryData(sparse_batch(k=12, seed=5), torch.randint(0, 3, (12,), generator=generator))
    assert needs_auxiliary("disaggregation_aux") and not needs_auxiliary("disaggregation")
    one_line_refusal(lambda: restore_from_update("disaggregation_aux", update, model), "needs the server's labelled")
    plain = restore_from_update("aux", update, model, aux=aux)
    none = restore_from_update("disaggregation_aux", update, model, aux=aux, max_programmes=0)
    assert none.details["recovered"] == 0 and none.details["fallback"] == "aux"
    assert none.raw_counts.tolist() == plain.raw_counts.tolist()
    assert none.details["fallback_details"]["aux"] == plain.details["aux"] == aux.record  # aux read the residual
    whole = restore_from_update("disaggregation_aux", update, model, aux=aux)
    assert whole.details["recovered"] == 3 and whole.counts.tolist() == TRUTH
