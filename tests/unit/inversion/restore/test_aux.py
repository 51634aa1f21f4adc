"""The ``aux`` label method (label_restore.aux) and its server side (inversion.restore.auxiliary): exact cases, the
non-negative solver, refusals, the FedAvg trajectory variant and the drivers."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import nnls
from torch import nn

from inversion.config import CONFIG_DIR, ConfigError, InvertConfig, load_config
from inversion.data import ArraySource
from inversion.data.specs import SPECS
from inversion.experiments.invert import run_inversion
from inversion.experiments.restore_labels import run_sweep
from inversion.fl.client import client_update
from inversion.fl.local import LocalTraining
from inversion.models import build_model
from inversion.restore import restore_from_update
from inversion.restore.auxiliary import (
    AuxiliaryData,
    aux_restoration,
    draw_auxiliary,
    simulated_client_softmax,
    softmax_outputs,
)
from label_restore import InconsistentGradientWarning, restore_labels
from label_restore.aux import class_conditional_probabilities, nonnegative_counts, project_to_simplex
from label_restore.errors import LabelRestoreInputError
from label_restore.linsolve import count_system


def class_prototype_case(counts, seed=0, dim=7):
    """A final layer and a batch whose samples of a class all share one embedding, plus three auxiliary samples
    per class with those embeddings: the class-conditional means are exact, so aux must be exact."""
    gen = torch.Generator().manual_seed(seed)
    c = len(counts)
    weight, bias = (
        torch.randn(c, dim, generator=gen, dtype=torch.float64),
        torch.randn(c, generator=gen, dtype=torch.float64),
    )
    prototypes = 2 * torch.randn(c, dim, generator=gen, dtype=torch.float64)
    labels = torch.repeat_interleave(torch.arange(c), torch.as_tensor(counts))
    emb = prototypes[labels]
    p = torch.softmax(emb @ weight.T + bias, 1)
    y = F.one_hot(labels, c).double()
    k = len(labels)
    grads = {
        "grad_weight": (p - y).T @ emb / k,
        "grad_bias": (p - y).mean(0),
        "weight": weight,
        "bias": bias,
        "batch_size": k,
    }
    aux_labels = torch.arange(c).repeat(3)
    aux_probs = torch.softmax(prototypes[aux_labels] @ weight.T + bias, 1)
    return grads, aux_probs, aux_labels


@pytest.mark.parametrize("counts", [[7, 0, 5, 8, 0], [1, 1, 1, 1, 1], [0, 0, 30, 0, 2], [40, 30, 20, 10, 0]])
def test_exact_when_the_class_means_are_exact(counts):
    grads, aux_probs, aux_labels = class_prototype_case(counts)
    r = restore_labels("aux", **grads, aux_probs=aux_probs, aux_labels=aux_labels)
    assert r.counts.tolist() == counts and r.raw_counts.tolist() == counts
    np.testing.assert_allclose(r.details["float_counts"], counts, atol=1e-6)
    assert r.diagnostics == () and r.details["aux_samples"] == 15 and r.details["missing_classes"] == []


def test_the_prototype_case_defeats_ilrg():
    # iLRG's class-wise embedding dW_i / db_i mixes the prototypes of all classes; aux reads them off the aux set
    grads, _, _ = class_prototype_case([7, 0, 5, 8, 0])
    with pytest.warns(InconsistentGradientWarning):  # and its own consistency checks say so
        assert restore_labels("ilrg", **grads).counts.tolist() != [7, 0, 5, 8, 0]


def test_a_trajectory_of_probabilities_is_averaged():
    grads, aux_probs, aux_labels = class_prototype_case([3, 1, 0, 4, 2])
    other = torch.softmax(torch.randn(aux_probs.shape, dtype=torch.float64), 1)
    stacked = restore_labels("aux", **grads, aux_probs=torch.stack([aux_probs, other]), aux_labels=aux_labels)
    mean = restore_labels("aux", **grads, aux_probs=(aux_probs + other) / 2, aux_labels=aux_labels)
    np.testing.assert_allclose(stacked.details["float_counts"], mean.details["float_counts"], atol=1e-9)
    assert stacked.details["trajectory_models"] == 2 and mean.details["trajectory_models"] == 1


def test_class_conditional_means_by_hand():
    q, per_class, missing = class_conditional_probabilities(
        torch.tensor([[0.6, 0.3, 0.1], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6]]),
        torch.tensor([0, 0, 2]),
        3,
        missing_classes="overall_mean",
    )
    np.testing.assert_allclose(q.numpy(), [[0.7, 0.2, 0.1], [0.8 / 1.5, 0.6 / 3, 0.8 / 3], [0.2, 0.2, 0.6]])
    assert per_class.tolist() == [2, 0, 1] and missing == [1]


def test_nonnegative_counts_match_lawson_hanson_and_sum_to_k():
    rng = np.random.default_rng(3)
    c, k = 40, 12
    q = torch.as_tensor(rng.dirichlet(np.full(c, 5.0), size=c))
    truth = np.zeros(c)
    truth[[2, 5, 9]] = [6, 4, 2]
    grad_bias = torch.as_tensor(((q.numpy().T - np.eye(c)) @ truth) / k + rng.normal(0, 3e-3, c))
    counts, info = nonnegative_counts(q, grad_bias, k)
    assert info["solver"] == "projected-gradient" and counts.min() >= 0
    assert counts.sum() == pytest.approx(k, abs=1e-9)
    a, y = count_system(q, grad_bias, k)
    a[0] *= 1e3
    y[0] *= 1e3
    np.testing.assert_allclose(counts, nnls(a, y, maxiter=10_000)[0], atol=1e-5)


def test_project_to_simplex():
    rng = np.random.default_rng(0)
    for _ in range(20):
        u, total = rng.normal(0, 3, 9), float(rng.integers(1, 20))
        x = project_to_simplex(u, total)
        assert x.min() >= 0 and x.sum() == pytest.approx(total)
        # optimality: x - u is constant on the support and larger off it (the KKT conditions of the projection)
        shift = (x - u)[x > 0]
        np.testing.assert_allclose(shift, shift[0])
        assert np.all((x - u)[x == 0] >= shift[0] - 1e-12)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"aux_probs": None}, "aux needs aux_probs"),
        ({"aux_labels": None}, "aux needs aux_labels"),
        ({"aux_probs": torch.full((15, 4), 0.25)}, r"shape \(N, C\) or \(T, N, C\) with C=5"),
        ({"aux_probs": torch.randn(15, 5)}, "finite, non-negative softmax"),
        ({"aux_probs": torch.rand(15, 5)}, "must sum to 1"),
        ({"aux_labels": torch.arange(5).repeat(3) + 1}, r"must lie in \[0, 4\]"),
        ({"aux_labels": torch.arange(14)}, r"shape \(15,\)"),
        ({"aux_labels": torch.zeros(15)}, "integer class indices"),
        ({"aux_labels": torch.arange(5).repeat(3) % 4}, r"no sample of 1 class\(es\) \(4\)"),
        ({"missing_classes": "drop"}, "unknown missing_classes"),
    ],
)
def test_bad_auxiliary_input_is_refused(change, message):
    grads, aux_probs, aux_labels = class_prototype_case([7, 0, 5, 8, 0])
    with pytest.raises(ValueError, match=message):
        restore_labels("aux", **grads, **{"aux_probs": aux_probs, "aux_labels": aux_labels, **change})


def test_a_class_without_auxiliary_samples_can_fall_back_and_is_recorded():
    grads, aux_probs, aux_labels = class_prototype_case([7, 0, 5, 8, 0])
    keep = aux_labels != 1
    r = restore_labels(
        "aux", **grads, aux_probs=aux_probs[keep], aux_labels=aux_labels[keep], missing_classes="overall_mean"
    )
    assert r.details["missing_classes"] == [1] and r.counts.sum() == 20


# ---------------------------------------------------------------- the server side: FedAvg trajectory


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def tiny_aux(seed=0):
    """Three classes, each ten copies of one image (so any batch's class means are the auxiliary ones)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 1, 2, 2, generator=gen, dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(10)
    return AuxiliaryData(images[labels], labels, {"source": "prototypes"})


def test_simulated_client_softmax_matches_a_hand_written_sgd_loop():
    model, aux = tiny_model(), tiny_aux()
    local = LocalTraining(steps=5, batch_size=2, lr=0.5)
    counts = np.array([2, 0, 4])
    probs, labels, weights = simulated_client_softmax(model, aux, local, counts, seed=1, repeats=1)
    # brute force: the same draw, explicit SGD on a parameter list, each mini-batch's softmax before its step,
    # and the absent class 1's first 32 auxiliary images (all 10) evaluated at every step
    rng = np.random.default_rng(1)
    picked = np.concatenate(
        [rng.choice(np.arange(0, 10), 2, replace=False), rng.choice(np.arange(20, 30), 4, replace=False)]
    )
    order = rng.permutation(6)
    x, y = aux.images[picked[order]], torch.tensor([0, 0, 2, 2, 2, 2])[order]
    params = [p.detach().clone().requires_grad_() for p in model.parameters()]

    def forward(inputs):
        h = torch.tanh(inputs.flatten(1) @ params[0].T + params[1])
        return h @ params[2].T + params[3]

    expected, expected_labels = [], []
    for step in range(5):
        rows = slice(2 * (step % 3), 2 * (step % 3) + 2)
        expected += [torch.softmax(forward(x[rows]), 1).detach(), torch.softmax(forward(aux.images[10:20]), 1).detach()]
        expected_labels += [y[rows], torch.ones(10, dtype=torch.int64)]
        grads = torch.autograd.grad(F.cross_entropy(forward(x[rows]), y[rows]), params)
        params = [(p - 0.5 * g).detach().requires_grad_() for p, g in zip(params, grads)]
    torch.testing.assert_close(probs, torch.cat(expected).float())
    assert torch.equal(labels, torch.cat(expected_labels))
    assert bool((weights == 0.5).all())  # no momentum: w_s = 1, over mini-batches of 2
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), tiny_model().parameters()))  # not changed


@pytest.mark.parametrize("local_steps, local_batch", [(5, 12), (6, 4)])
def test_fedavg_variant_is_exact_on_prototypes_where_the_first_pass_is_not(local_steps, local_batch):
    model, aux = tiny_model(), tiny_aux()
    counts = [2, 3, 7]
    labels = torch.tensor([2, 0, 1, 2, 2, 1, 0, 2, 2, 1, 2, 2])  # mini-batches of 4 hold 1-3 classes each
    assert np.bincount(labels).tolist() == counts
    images = aux.images[labels * 10]
    local = LocalTraining(steps=local_steps, batch_size=local_batch, lr=0.5)
    update = client_update(model, images, labels, local=local)
    result = aux_restoration(update, model, aux, 12)
    assert result.counts.tolist() == counts and result.details["simulated_steps"] == local_steps
    first = restore_labels(
        "aux",
        grad_bias=update.final_layer_gradients(model)[1],
        batch_size=12,
        aux_probs=softmax_outputs(model, aux.images),
        aux_labels=aux.labels,
    )
    assert first.counts.tolist() != counts  # the initial model's class means are not enough at this rate
    if local_batch == 12:  # full-batch steps: clients simulated with the true counts follow the client's path
        assert result.details["misfit"] < 1e-4


def array_source(n=60, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    return ArraySource(SPECS["mnist"], images, np.arange(n) % 10, f"{n} random images")


def test_draw_auxiliary_excludes_the_batch_and_records_the_draw():
    source = array_source()
    aux = draw_auxiliary(source, 50, seed=3, exclude=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
    assert len(aux) == 50 and aux.record["excluded"] == 10 and aux.record["size"] == 50
    every = draw_auxiliary(source, 500, seed=3, exclude=range(10))
    assert len(every) == 50 and every.record["requested"] == 500  # all that is left
    torch.testing.assert_close(sorted(every.labels.tolist()), sorted((np.arange(10, 60) % 10).tolist()))
    with pytest.raises(ValueError, match="no auxiliary images are left"):
        draw_auxiliary(source, 5, seed=0, exclude=range(60))


def test_draw_auxiliary_refuses_positions_outside_the_source():
    source = array_source()
    for exclude, match in [
        ([3, 60], r"outside the 60 images of 60 random images \(min 3, max 60\)"),
        ([-1, 3], r"outside the 60 images .*\(min -1, max 3\)"),
        ([1.5], "integer positions in the source, got float64"),
    ]:
        with pytest.raises(ValueError, match=match):
            draw_auxiliary(source, 5, seed=0, exclude=exclude)
    assert draw_auxiliary(source, 5, seed=0, exclude=np.array([0, 59])).record["excluded"] == 2


def test_an_auxiliary_set_of_another_dataset_is_refused():
    model = build_model("fcn", num_classes=10, in_channels=1, image_size=(28, 28), width=8)
    source = array_source()
    update = client_update(
        model,
        source.spec.normalize(source.images([0, 1, 2])),
        torch.tensor([0, 1, 2]),
        dataset="mnist",
        mean=source.spec.mean,
        std=source.spec.std,
    )
    assert restore_from_update("aux", update, model, aux=draw_auxiliary(source, 30, seed=0)).counts.sum() == 3
    pixels = np.random.default_rng(0).integers(0, 256, (20, 28, 28, 1), dtype=np.uint8)
    others = [
        (
            ArraySource(SPECS["cifar10"], np.zeros((20, 32, 32, 3), dtype=np.uint8), np.arange(20) % 10, "cifar"),
            r"the auxiliary images are \(3, 32, 32\) \(C, H, W\) but the inputs of the update \(1, 28, 28\)",
        ),
        (
            ArraySource(
                dataclasses.replace(SPECS["mnist"], image_size=(14, 14)),
                pixels[:, :14, :14],
                np.arange(20) % 10,
                "small",
            ),
            r"the auxiliary images are \(1, 14, 14\) \(C, H, W\) but the inputs of the update "
            r"\(1, 28, 28\)",
        ),
        (
            ArraySource(
                dataclasses.replace(SPECS["mnist"], mean=(0.5,), std=(0.5,)), pixels, np.arange(20) % 10, "half"
            ),
            r"normalised with mean \(0.5,\), std \(0.5,\) but the inputs of the update with mean \(0.1307,\)",
        ),
        (
            ArraySource(dataclasses.replace(SPECS["mnist"], num_classes=100), pixels, np.arange(20) % 10, "many"),
            "the auxiliary set has 100 classes \\(mnist\\) but the model 10",
        ),
    ]
    for other, match in others:
        with pytest.raises(ValueError, match=match):
            restore_from_update("aux", update, model, aux=draw_auxiliary(other, 20, seed=0))


def test_restore_from_update_wants_aux_data_only_for_aux():
    model, aux = tiny_model(), tiny_aux()
    update = client_update(model, aux.images[:4], aux.labels[:4])
    with pytest.raises(ValueError, match="needs the server's labelled auxiliary data"):
        restore_from_update("aux", update, model)
    with pytest.raises(ValueError, match="'ilrg' does not read it"):
        restore_from_update("ilrg", update, model, aux=aux)


def test_pipeline_with_aux_labels_records_the_auxiliary_set(data_root, tmp_path):
    cfg = load_config(
        InvertConfig,
        "configs/invert/default.yaml",
        [
            f"data.root={data_root}",
            "data.download=false",
            "attack.labels=aux",
            "attack.max_steps=2",
            "attack.restarts=1",
            "aux.size=300",
            "aux.seed=5",
            f"out={tmp_path}",
        ],
    )
    run = run_inversion(cfg, progress=False, lpips_metric=None)
    saved = json.loads((tmp_path / "results.json").read_text())["restoration"]
    assert saved["method"] == "aux" and saved["aux"]["size"] == 300 and saved["aux"]["seed"] == 5
    assert saved["aux"]["excluded"] == run.update.batch_size and saved["raw_metrics"]["LnAcc"] == 1.0


def test_an_auxiliary_set_without_some_class_is_a_config_error(data_root, tmp_path):
    cfg = load_config(
        InvertConfig,
        "configs/invert/default.yaml",
        [
            f"data.root={data_root}",
            "data.download=false",
            "attack.labels=aux",
            "attack.max_steps=2",
            "aux.size=3",
            f"out={tmp_path}",
        ],
    )
    with pytest.raises(ConfigError, match="labels=aux: the auxiliary data has no sample of"):
        run_inversion(cfg, progress=False, lpips_metric=None)


def test_synthetic_client_labels_get_synthetic_auxiliary_labels():
    aux = draw_auxiliary(array_source(), 40, seed=1, synthetic_classes=100)
    assert aux.record["labels"] == "synthetic (uniform over 100)" and int(aux.labels.max()) >= 10
    again = draw_auxiliary(array_source(), 40, seed=1, synthetic_classes=100)
    assert torch.equal(aux.labels, again.labels)


def test_benchmark_scores_aux_and_records_the_auxiliary_set(data_root, tmp_path):
    results = run_sweep(
        CONFIG_DIR / "restore_labels" / "default.yaml",
        [
            f"data.root={data_root}",
            "data.download=false",
            f"out={tmp_path}",
            "restore.trials=2",
            "restore.batch_sizes=[64]",
            "restore.methods=[ilrg, aux]",
            "model=fcn3",
            "data=mnist",
            "aux.size=500",
        ],
        progress=False,
    )
    setting = results["settings"][0]
    assert setting["aux"]["size"]["mean"] == 500 and setting["aux"]["labels"] == "real"
    assert setting["results"]["none"]["aux"]["LnAcc"]["mean"] == 1.0
    assert "500 labelled auxiliary images per trial" in (tmp_path / "results.md").read_text()


def test_a_schedule_that_visits_part_of_the_batch_still_gives_every_class_rows():
    # S * B = 1 < K = 12: the simulated client trains on one sample; the other classes are probed at every step
    probs, labels, _ = simulated_client_softmax(
        tiny_model(), tiny_aux(), LocalTraining(steps=1, batch_size=1, lr=0.5), np.array([1, 1, 10]), seed=0, repeats=1
    )
    assert set(labels.tolist()) == {0, 1, 2} and probs.shape == (1 + 30, 3)


def test_class_means_weigh_each_sample_by_its_weight():
    probs, labels = [[0.6, 0.4], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]], [0, 0, 1, 1]
    q, _, _ = class_conditional_probabilities(probs, labels, 2, weights=[3.0, 1.0, 1.0, 1.0])
    torch.testing.assert_close(q, torch.tensor([[0.65, 0.35], [0.2, 0.8]], dtype=torch.float64))  # (3*.6+.8)/4
    with pytest.raises(LabelRestoreInputError, match="aux weights must be 4 finite non-negative"):
        class_conditional_probabilities(probs, labels, 2, weights=[1.0, -1.0, 1.0, 1.0])


def test_a_momentum_clients_rows_weigh_as_their_steps_do_in_its_delta():
    local = LocalTraining(steps=3, batch_size=2, lr=0.5, momentum=0.5)  # w = 1.75, 1.5, 1 over mini-batches of 2
    _, _, weights = simulated_client_softmax(tiny_model(), tiny_aux(), local, np.array([2, 2, 2]), seed=0, repeats=1)
    assert weights.tolist() == [0.875] * 2 + [0.75] * 2 + [0.5] * 2  # every class visited: no probes
