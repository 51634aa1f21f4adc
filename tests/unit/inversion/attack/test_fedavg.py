"""FedAvg updates: the client's local training, its unrolled twin in the attack, and both stages on it."""

import pytest
import torch
from torch.func import functional_call

from inversion.attack import AttackSettings, Inversion, plan_labels
from inversion.fl import LocalTraining, SharedUpdate, client_update, unroll_local_training
from inversion.models import build_model

K = 8


def problem(seed=0):
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(6, 6), width=64, seed=seed)
    generator = torch.Generator().manual_seed(seed + 7)
    images = torch.rand(K, 1, 6, 6, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])  # in the plan's (sorted) order: the dummies' mini-batches match
    return model, images, labels


def test_one_full_batch_step_is_minus_eta_times_the_fedsgd_gradient():
    model, images, labels = problem()
    gradient = client_update(model, images, labels)
    delta = client_update(model, images, labels, local=LocalTraining(steps=1, batch_size=K, lr=0.05))
    assert delta.kind == "fedavg" and delta.meta.local == LocalTraining(1, K, 0.05)
    for name, g in gradient.gradients.items():  # float32 weights: theta - eta*g - theta cancels ~1e-8 absolute
        torch.testing.assert_close(delta.gradients[name], -0.05 * g, rtol=1e-4, atol=2e-8)
        torch.testing.assert_close(delta.pseudo_gradients()[name], g, rtol=1e-3, atol=4e-7)


def test_local_mini_batches_cycle_in_order():
    local = LocalTraining(steps=5, batch_size=2, lr=0.1)
    assert [local.rows(s, K) for s in range(5)] == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8), slice(0, 2)]
    assert local.epochs(K) == 1.25
    with pytest.raises(ValueError, match="local steps must be a positive integer"):
        LocalTraining(steps=0, batch_size=2, lr=0.1)
    with pytest.raises(ValueError, match="learning rate must be > 0"):
        LocalTraining(steps=1, batch_size=2, lr=0.0)


def test_the_unrolled_local_training_reproduces_the_clients_delta_on_the_true_batch():
    model, images, labels = problem()
    local = LocalTraining(steps=6, batch_size=2, lr=0.3)  # 1.5 local epochs: the mini-batches wrap around
    update = client_update(model, images, labels, local=local)

    def loss(theta, rows):
        return torch.nn.functional.cross_entropy(functional_call(model, theta, (images[rows],)), labels[rows])

    unrolled = unroll_local_training(model, local, K, loss)
    for name, delta in update.gradients.items():
        torch.testing.assert_close(unrolled[name].detach(), delta, rtol=1e-5, atol=1e-7)
    inversion = Inversion(
        model,
        update,
        plan_labels("oracle", update, model, true_labels=labels),
        AttackSettings(max_steps=1),
        bounds=(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)),
    )
    assert float(inversion.problem.match(images.clone().requires_grad_(True), None).detach()) < 1e-6
    swapped = images[torch.tensor([0, 2, 1, 3, 4, 5, 6, 7])]  # samples 1 and 2 change mini-batches (and labels)
    assert float(inversion.problem.match(swapped.clone().requires_grad_(True), None).detach()) > 1e-3


def test_the_attack_inverts_a_fedavg_update():
    model, images, labels = problem()
    update = client_update(model, images, labels, local=LocalTraining(steps=4, batch_size=4, lr=0.1))
    plan = plan_labels("oracle", update, model, true_labels=labels)
    inversion = Inversion(
        model,
        update,
        plan,
        AttackSettings(max_steps=200, lr=0.05, init="rand", span="never"),
        bounds=(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1)),
    )
    start = inversion.problem.images(inversion.problem.fresh_restart(0).x)
    start_loss = float(inversion.problem.match(start.clone().requires_grad_(True), None).detach())
    result = inversion.run(progress=False)
    assert result.loss < 0.1 * start_loss  # measured: 0.027 from 0.59
    assert float(((result.images - images) ** 2).mean()) < 0.6 * float(((start - images) ** 2).mean())  # 0.074/0.155


def test_labels_restore_from_a_fedavg_pseudo_gradient_over_one_local_epoch():
    model, images, labels = problem()
    update = client_update(model, images, labels, local=LocalTraining(steps=4, batch_size=2, lr=0.01))
    assert plan_labels("ilrg", update, model).fixed.tolist() == sorted(labels.tolist())


def test_a_fedavg_update_keeps_its_schedule_through_a_file(tmp_path):
    model, images, labels = problem()
    update = client_update(model, images, labels, local=LocalTraining(steps=3, batch_size=4, lr=0.2))
    loaded = SharedUpdate.load(update.save(tmp_path / "update.pt"))
    assert loaded.kind == "fedavg" and loaded.meta.local == update.meta.local and loaded.sha256 == update.sha256
    with pytest.raises(ValueError, match="a fedavg update needs meta.local"):
        SharedUpdate(update.gradients, K, client_update(model, images, labels).meta, "fedavg")


def test_a_simulated_fedavg_client_is_configured_and_attacked_end_to_end(data_root, tmp_path):
    import json

    from inversion.config import CONFIG_DIR, ConfigError, InvertConfig, load_config
    from inversion.experiments.invert import run_inversion

    base = [
        f"data.root={data_root}",
        "data.download=false",
        "client.batch_size=4",
        "model.width=32",
        "client.kind=fedavg",
        "client.local_steps=4",
        "client.local_batch_size=2",
        "client.local_lr=0.05",
        "attack.max_steps=30",
        f"out={tmp_path / 'run'}",
    ]
    partial = load_config(InvertConfig, CONFIG_DIR / "invert" / "default.yaml", [*base, "client.local_batch_size=3"])
    assert partial.client.local_training().batches_per_epoch(4) == 2  # 3 samples, then the last one
    with pytest.raises(ConfigError, match="local momentum must be a number in"):
        load_config(InvertConfig, CONFIG_DIR / "invert" / "default.yaml", [*base, "client.local_momentum=1.5"])
    run_inversion(load_config(InvertConfig, CONFIG_DIR / "invert" / "default.yaml", base), progress=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["update"]["kind"] == "fedavg" and results["attack"]["steps"] == 30
    assert results["update"]["local"] == {"steps": 4, "batch_size": 2, "lr": 0.05}
    assert results["label_metrics"] is not None and results["image_metrics"]["mean"]["psnr"] > 5


def test_the_fedavg_oracle_keeps_the_clients_order_which_decides_the_mini_batches():
    model, images, labels = problem()
    order = torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])
    update = client_update(model, images[order], labels[order], local=LocalTraining(steps=4, batch_size=2, lr=0.3))
    plan = plan_labels("oracle", update, model, true_labels=labels[order])
    assert plan.fixed.tolist() == labels[order].tolist()
    inversion = Inversion(
        model, update, plan, AttackSettings(max_steps=1), bounds=(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    )
    assert float(inversion.problem.match(images[order].clone().requires_grad_(True), None).detach()) < 1e-6
    fedsgd = client_update(model, images[order], labels[order])
    assert plan_labels("oracle", fedsgd, model, true_labels=labels[order]).fixed.tolist() == sorted(labels.tolist())


def test_a_shuffling_client_keeps_its_orders_private_and_the_oracle_order_reads_them(data_root, tmp_path):
    import json

    from inversion.config import CONFIG_DIR, ConfigError, InvertConfig, load_config
    from inversion.experiments.invert import run_inversion
    from inversion.fl.simulate import simulate_client

    base = [
        f"data.root={data_root}",
        "data.download=false",
        "client.batch_size=6",
        "model.width=32",
        "attack.max_steps=2",
        "attack.checkpoint_every=0",
        "attack.snapshot_every=0",
    ]
    shuffled = [
        *base,
        "client.kind=fedavg",
        "client.local_steps=6",
        "client.local_batch_size=2",
        "client.local_shuffle=true",
    ]
    cfg = load_config(InvertConfig, CONFIG_DIR / "invert" / "default.yaml", shuffled)
    run = simulate_client(cfg, progress=False)
    orders = torch.tensor(run.private.record["local_orders"])  # private: the update says only that it shuffles
    assert orders.shape == (2, 6) and run.update.meta.local.shuffle and "local_orders" not in str(run.update.meta)
    again = client_update(
        run.model, run.private.images, run.private.labels, local=run.update.meta.local, orders=orders, dataset="mnist"
    )
    assert again.sha256 == run.update.sha256  # the recorded orders are the ones the client trained with
    out = tmp_path / "oracle"
    oracle = load_config(
        InvertConfig,
        CONFIG_DIR / "invert" / "default.yaml",
        [*shuffled, "attack.labels=oracle", "attack.local_order=oracle", f"out={out}"],
    )
    run_inversion(oracle, progress=False)
    assert json.loads((out / "results.json").read_text())["attack"]["steps"] == 2
    fedsgd = load_config(
        InvertConfig,
        CONFIG_DIR / "invert" / "default.yaml",
        [*base, "attack.local_order=oracle", f"out={tmp_path / 'fedsgd'}"],
    )
    with pytest.raises(ConfigError, match="attack.local_order: oracle is for FedAvg updates"):
        run_inversion(fedsgd, progress=False)
    assert not (tmp_path / "fedsgd").exists()  # refused before anything was written
