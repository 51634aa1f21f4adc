"""Runs too large for the machine are refused before they start, from an estimate of their memory."""

import dataclasses

import pytest
import torch

import inversion as gl
import inversion.fl.simulate
import inversion.models
import inversion.utils.memory
from inversion.config import CONFIG_DIR, InvertConfig, load_config
from inversion.experiments.invert import run_inversion
from inversion.fl import LocalTraining, client_update
from inversion.models import build_model, footprint
from inversion.utils.memory import attack_memory, client_memory

GiB = 2**30
DEFAULT = CONFIG_DIR / "invert" / "default.yaml"


@pytest.fixture
def free(monkeypatch):
    """Sets how many bytes the checks see free (16 GiB unless changed), whatever this machine has."""

    def pin(count=16 * GiB):
        for module in (inversion.utils.memory, inversion.models):
            monkeypatch.setattr(module, "available_memory", lambda device="cpu": count)

    pin()
    return pin


def tiny_model():
    """FCN on 1x4x4 inputs, one hidden layer of 5, 3 classes: P = 16·5 + 5 + 5·3 + 3 = 103, A = 5 + 5 + 3 = 13."""
    return build_model("fcn", num_classes=3, in_channels=1, image_size=(4, 4), width=5, depth=2)


def test_the_estimates_of_a_tiny_model_are_the_hand_computed_figures():
    sizes = footprint(tiny_model(), (1, 4, 4))
    assert sizes == (103, 13)
    # client, K=2, D=16: batch 2·2·16, model 2·103, activations 3/2·2·13 = 39 values of 4 bytes
    assert client_memory(*sizes, (1, 4, 4), 2).total == 4 * (64 + 206 + 39)
    # attack: dummies 5·2·16, model 3·103, activations 3·2·13
    assert attack_memory(*sizes, (1, 4, 4), 2).total == 4 * (160 + 309 + 78) == 2188
    # FedAvg through 3 steps of 1: each keeps 2·103 parameters and gradients and 2·1·13 activations
    local = LocalTraining(steps=3, batch_size=1, lr=0.1)
    assert attack_memory(*sizes, (1, 4, 4), 2, local=local).total == 4 * (160 + 309 + 3 * (206 + 26))


def test_a_model_whose_parameters_alone_cannot_fit_is_refused_before_it_is_built(free):
    with pytest.raises(ValueError) as info:  # counted on the meta device: allocating 364 TiB would fail otherwise
        build_model("fcn", num_classes=10, in_channels=1, image_size=(28, 28), width=10**7)
    count = 784 * 10**7 + 10**7 + 10**7 * 10**7 + 10**7 + 10**7 * 10 + 10
    assert f"has {count:,} parameters" in str(info.value) and "width=10,000,000" in str(info.value)
    assert "more than the 16 GiB of memory available" in str(info.value)
    assert build_model("fcn", num_classes=10, in_channels=1, image_size=(28, 28), width=300).config["width"] == 300


def saved_update(path, *, batch_size=None, steps=None):
    """A FedSGD update of the tiny model on 2 images (FedAvg with 1 step of 2 when ``steps``), saved to ``path``
    after its metadata is changed to claim ``batch_size`` images or ``steps`` local steps."""
    images = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    local = None if steps is None else LocalTraining(steps=1, batch_size=2, lr=0.1)
    update = client_update(tiny_model(), images, torch.tensor([0, 2]), local=local, mean=[0.5], std=[0.5])
    if batch_size is not None:
        update = dataclasses.replace(update, batch_size=batch_size)
    if steps is not None:
        update = dataclasses.replace(update, meta=dataclasses.replace(update.meta, local=LocalTraining(steps, 2, 0.1)))
    update.save(path)
    return path


def invert_saved(path, out, *extra):
    cfg = load_config(
        InvertConfig,
        DEFAULT,
        [
            f"update={path}",
            f"out={out}",
            "attack.device=cpu",
            "attack.max_steps=2",
            "attack.checkpoint_every=0",
            "attack.snapshot_every=0",
            *extra,
        ],
    )
    return run_inversion(cfg, progress=False)


@pytest.mark.parametrize(
    "claim, expected",
    [
        ({"batch_size": 10**9}, "the attack on K=1,000,000,000 inputs of 1x4x4 needs about"),
        ({"steps": 10**9}, "the attack on K=2 inputs of 1x4x4 through 1,000,000,000 local steps of 2 needs about"),
    ],
    ids=["K=1e9", "local.steps=1e9"],
)
def test_an_update_claiming_a_huge_batch_or_local_training_is_refused_before_anything_runs(
    tmp_path, free, claim, expected
):
    path = saved_update(tmp_path / "update.pt", **claim)
    with pytest.raises(ValueError) as info:  # before label restoration or the attack allocate (a MemoryError)
        invert_saved(path, tmp_path / "run")
    message = str(info.value)
    assert expected in message and "more than the 16 GiB of memory free on cpu" in message
    assert message.endswith("or set attack.memory_check=false to run it anyway") and "\n" not in message
    assert not (tmp_path / "run" / "results.json").exists()
    with pytest.raises(ValueError, match=expected):  # the Python API checks too
        gl.invert(gl.load_update(path), tiny_model(), labels="shared", max_steps=2, progress=False)


def test_a_small_attack_runs_and_the_override_runs_one_the_estimate_refuses(tmp_path, free):
    path = saved_update(tmp_path / "update.pt")
    assert invert_saved(path, tmp_path / "fits").result.steps == 2  # 16 GiB free: far more than it needs
    free(2000)  # bytes: the model's 412 bytes fit, the attack's 2188 (hand-computed above) do not
    with pytest.raises(ValueError, match=r"needs about 2\.14 KiB .*more than the 1\.95 KiB of memory free"):
        invert_saved(path, tmp_path / "refused")
    assert invert_saved(path, tmp_path / "forced", "attack.memory_check=false").result.steps == 2


def test_a_simulated_run_that_cannot_fit_is_refused_before_the_client_draws_its_batch(
    data_root, tmp_path, free, monkeypatch
):
    def no_batch(*args, **kwargs):
        raise AssertionError("the batch was drawn before the memory check")

    monkeypatch.setattr(inversion.fl.simulate, "batch_from_config", no_batch)
    base = [f"data.root={data_root}", "data.download=false", f"out={tmp_path / 'run'}", "attack.device=cpu"]
    cases = {  # LeNet-5 on 200,000 MNIST digits: 3·K·A alone is 3·200,000·10,498 float32 values, 23.5 GiB
        "the attack on K=200,000 inputs of 1x28x28 needs about 26.4 GiB": [
            "model=lenet5",
            "client.batch_size=200000",
            "client.replacement=true",
        ],
        "through 1,000,000,000 local steps of 2": [
            "client.kind=fedavg",
            "client.local_steps=1000000000",
            "client.local_batch_size=2",
            "client.batch_size=4",
        ],
        "the client's FedSGD update of K=1,000,000,000 inputs": [
            "client.batch_size=1000000000",
            "client.replacement=true",
        ],
    }
    for expected, overrides in cases.items():
        with pytest.raises(ValueError, match=expected):
            run_inversion(load_config(InvertConfig, DEFAULT, [*base, *overrides]), progress=False)


def test_the_memory_checks_do_not_change_a_runs_identity():
    from inversion.experiments.invert import run_identity

    cfg = load_config(InvertConfig, DEFAULT)
    off = load_config(InvertConfig, DEFAULT, ["attack.memory_check=false", "client.memory_check=false"])
    assert run_identity(cfg, "0" * 64) == run_identity(off, "0" * 64)
    assert run_identity(cfg, "0" * 64) != run_identity(load_config(InvertConfig, DEFAULT, ["attack.lr=0.2"]), "0" * 64)
