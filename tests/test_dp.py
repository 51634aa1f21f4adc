"""DP-SGD through Opacus: the client's privatized update, checked against Opacus's own per-sample gradients."""
import math

import pytest
import torch

from inversion.config import CONFIG_DIR, ConfigError, ShareConfig, load_config
from inversion.fl import LocalTraining, client_update
from inversion.fl.dp import DPSGD, dp_client_tensors, per_sample_gradients
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


def test_epsilon_is_reported_and_decreases_with_the_noise():
    model, images, labels = problem()
    update = client_update(model, images, labels, dp=DPSGD(1.0, 1.0), dp_seed=5)
    record = update.meta.notes["dp"]
    assert record["noise_multiplier"] == 1.0 and record["max_grad_norm"] == 1.0 and "seed" not in str(record)
    epsilons = [DPSGD(s).epsilon(1.0, 1) for s in (0.5, 1.0, 2.0)]
    assert record["epsilon"] == epsilons[1] and epsilons[0] > epsilons[1] > epsilons[2] > 0
    assert DPSGD(1.0).epsilon(0.25, 1) < epsilons[1]  # sub-sampling amplifies privacy
    assert DPSGD(0.0).epsilon(1.0, 1) is None


def test_bad_dp_settings_and_batch_norm_are_refused():
    with pytest.raises(ValueError, match="infinite variance"):
        DPSGD(0.5, math.inf)
    with pytest.raises(ConfigError, match="noise multiplier must be >= 0"):
        load_config(ShareConfig, CONFIG_DIR / "share.yaml", ["client.dp_noise_multiplier=-1"])
    model = build_model("convnet", num_classes=4, in_channels=1, image_size=(12, 12), width=4, seed=0)
    with pytest.raises(ValueError, match="batch norm mixes the samples"):
        client_update(model, torch.rand(2, 1, 12, 12), torch.tensor([0, 1]), dp=DPSGD(0.1))
