"""DP-SGD through Opacus: the client's privatized update, checked against Opacus's own per-sample gradients."""

import math

import pytest
import torch

from inversion.config import CONFIG_DIR, ConfigError, ShareConfig, load_config
from inversion.fl import LocalTraining, PrivateBatch, client_update
from inversion.fl.dp import DPSGD, dp_client_tensors, per_sample_gradients
from inversion.fl.simulate import simulate_client
from inversion.models import build_model

pytest.importorskip("opacus")
K = 8


def problem():
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(6, 6), width=16, seed=0)
    images = torch.rand(K, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    return model, images, torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])


def test_no_noise_and_no_clipping_is_the_plain_update():
    model, images, labels = problem()
    plain = client_update(model, images, labels)
    private = client_update(model, images, labels, dp=DPSGD(0.0, math.inf))
    for name, g in plain.gradients.items():
        torch.testing.assert_close(private.gradients[name], g, rtol=1e-5, atol=1e-8)
    local = LocalTraining(steps=4, batch_size=2, lr=0.1)
    plain = client_update(model, images, labels, local=local)
    private = client_update(model, images, labels, local=local, dp=DPSGD(0.0, math.inf))
    assert private.kind == "fedavg" and private.meta.notes["dp"]["epsilon"] is None
    for name, delta in plain.gradients.items():
        torch.testing.assert_close(private.gradients[name], delta, rtol=1e-4, atol=3e-8)  # float32 delta


def test_clipping_bounds_every_per_sample_gradient():
    """With noise 0 the shared gradient is the mean of Opacus's per-sample gradients, each clipped to norm C."""
    model, images, labels = problem()
    per_sample = per_sample_gradients(model, images, labels)
    alone = client_update(model, images[2:3], labels[2:3]).gradients  # sample 2 on its own
    for name, g in alone.items():
        torch.testing.assert_close(per_sample[name][2], g, rtol=1e-5, atol=1e-8)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_sample.values()))  # (K,)
    clip = float(norms.median())  # half of the samples are clipped
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped_norms = norms * factors
    assert (clipped_norms <= clip * (1 + 1e-5)).all() and (factors < 1).sum() >= K // 2 - 1
    shared = dp_client_tensors(model, images, labels, DPSGD(0.0, clip))
    for name, g in per_sample.items():
        expected = (g * factors.view(-1, *[1] * (g.ndim - 1))).mean(0)
        torch.testing.assert_close(shared[name], expected, rtol=1e-5, atol=1e-8)
    total = math.sqrt(sum(float(t.pow(2).sum()) for t in shared.values()))
    assert total <= clip * (1 + 1e-5)  # a mean of vectors of norm <= C


def test_noise_has_the_dp_sgd_scale_and_comes_from_the_clients_seed():
    model = build_model("fcn", num_classes=4, in_channels=1, image_size=(6, 6), width=64, seed=0)
    _, images, labels = problem()
    clean = dp_client_tensors(model, images, labels, DPSGD(0.0, 1.0))
    noisy = dp_client_tensors(model, images, labels, DPSGD(0.5, 1.0), seed=3)
    again = dp_client_tensors(model, images, labels, DPSGD(0.5, 1.0), seed=3)
    other = dp_client_tensors(model, images, labels, DPSGD(0.5, 1.0), seed=4)
    noise = torch.cat([(noisy[n] - clean[n]).flatten() for n in clean])
    assert noise.numel() > 5000 and float(noise.std()) == pytest.approx(0.5 * 1.0 / K, rel=0.05)
    assert all(torch.equal(noisy[n], again[n]) for n in noisy) and not torch.equal(noisy["fc.bias"], other["fc.bias"])
    fresh = [dp_client_tensors(model, images, labels, DPSGD(0.5, 1.0)) for _ in range(2)]  # no seed: OS entropy
    assert not torch.equal(fresh[0]["fc.bias"], fresh[1]["fc.bias"])


def test_the_noise_seed_is_fresh_unless_fixed_and_only_the_private_file_holds_it(data_root, tmp_path):
    """By default every run draws its own seed (nobody can regenerate the noise); the private file records it and
    it regenerates the update; the update holds no seed. A fixed client.dp_noise_seed reproduces the update."""

    def client(*extra):
        cfg = load_config(
            ShareConfig,
            CONFIG_DIR / "share_update.yaml",
            [
                "model=fcn3",
                "model.width=32",
                f"data.root={data_root}",
                "data.download=false",
                "client.batch_size=3",
                "client.dp_noise_multiplier=1",
                *extra,
            ],
        )
        return simulate_client(cfg, progress=False)

    runs = [client(), client()]
    assert torch.equal(runs[0].private.images, runs[1].private.images)  # the same batch: only the noise differs
    assert runs[0].update.sha256 != runs[1].update.sha256
    seeds = []
    for i, run in enumerate(runs):
        seed = PrivateBatch.load(run.private.save(tmp_path / f"private{i}.pt")).record["dp_noise_seed"]
        update_bytes = run.update.save(tmp_path / f"update{i}.pt").read_bytes()
        assert str(seed).encode() not in update_bytes and "seed" not in str(run.update.meta.notes["dp"])
        again = dp_client_tensors(run.model, run.private.images, run.private.labels, DPSGD(1.0), seed=seed)
        assert all(torch.equal(again[name], g) for name, g in run.update.gradients.items())
        seeds.append(seed)
    assert seeds[0] != seeds[1] and min(seeds) >= 0
    fixed = [client("client.dp_noise_seed=7") for _ in range(2)]
    assert fixed[0].private.record["dp_noise_seed"] == fixed[1].private.record["dp_noise_seed"] == 7
    assert fixed[0].update.sha256 == fixed[1].update.sha256 not in {r.update.sha256 for r in runs}


def test_epsilon_is_reported_and_decreases_with_the_noise():
    model, images, labels = problem()
    update = client_update(model, images, labels, dp=DPSGD(1.0, 1.0), dp_seed=5)
    record = update.meta.notes["dp"]
    assert record["noise_multiplier"] == 1.0 and record["max_grad_norm"] == 1.0 and "seed" not in str(record)
    epsilons = [DPSGD(s).epsilon(1.0, 1) for s in (0.5, 1.0, 2.0)]
    assert record["epsilon"] == epsilons[1] and epsilons[0] > epsilons[1] > epsilons[2] > 0
    assert DPSGD(1.0).epsilon(0.25, 1) < epsilons[1]  # sub-sampling amplifies privacy
    assert DPSGD(0.0).epsilon(1.0, 1) is None


def test_a_fedavg_updates_epsilon_is_accounted_at_the_local_sampling_rate():
    """S=4 local steps on mini-batches of B=2 of K=8: ε is Opacus's RDP accountant, driven step by step through
    its public API, at sampling rate B/K = 1/4 (rate 1, no amplification, would report a far larger ε)."""
    from opacus.accountants import RDPAccountant

    model, images, labels = problem()
    local = LocalTraining(steps=4, batch_size=2, lr=0.1)
    record = client_update(model, images, labels, local=local, dp=DPSGD(1.0, 1.0, 1e-5), dp_seed=0).meta.notes["dp"]
    accountant = RDPAccountant()
    for _ in range(4):
        accountant.step(noise_multiplier=1.0, sample_rate=2 / 8)
    expected = accountant.get_epsilon(delta=1e-5)
    assert record["epsilon"] == pytest.approx(expected, rel=1e-12)  # float64 arithmetic, the same formula
    assert expected < 0.5 * DPSGD(1.0, 1.0, 1e-5).epsilon(1.0, 4)
    assert record["accountant"] == "opacus RDP, 4 step(s) at sampling rate 2/8 (assumes Poisson sampling)"


def test_an_ablations_label_modes_see_the_same_dp_noise():
    """The ablation compares label modes pair by pair: each run fixes the DP noise seed to the sweep's seed."""
    from inversion.experiments.ablate import AblateConfig, _plan

    runs = _plan(
        load_config(
            AblateConfig,
            None,
            [
                "experiments=[{name: dp, config: configs/invert/default.yaml, "
                "overrides: [client.dp_noise_multiplier=0.5]}]",
                "seeds=[0,1]",
                "modes=[ilrg,shared]",
            ],
        )
    )
    assert [(run.description["seed"], run.payload["client"]["dp_noise_seed"]) for run in runs] == [
        (0, 0),
        (0, 0),
        (1, 1),
        (1, 1),
    ]


def test_bad_dp_settings_and_batch_norm_are_refused():
    with pytest.raises(ValueError, match="infinite variance"):
        DPSGD(0.5, math.inf)
    with pytest.raises(ConfigError, match="noise multiplier must be >= 0"):
        load_config(ShareConfig, CONFIG_DIR / "share_update.yaml", ["client.dp_noise_multiplier=-1"])
    model = build_model("convnet", num_classes=4, in_channels=1, image_size=(12, 12), width=4, seed=0)
    with pytest.raises(ValueError, match="batch norm mixes the samples"):
        client_update(model, torch.rand(2, 1, 12, 12), torch.tensor([0, 1]), dp=DPSGD(0.1))
