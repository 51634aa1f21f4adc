"""Configs: groups, overrides, and errors that name the key and the valid choices."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from inversion.config import CONFIG_DIR, ConfigError, ShareConfig, load_config, save_config, to_dict

SHARE = CONFIG_DIR / "share_update.yaml"


def test_default_share_config():
    cfg = to_dict(load_config(ShareConfig, SHARE))
    assert cfg["data"]["name"] == "mnist"
    assert cfg["model"]["name"] == "lenet5"
    assert cfg["client"] == {**cfg["client"], "batch_size": 8, "sampler": "random", "bn_mode": "eval"}


def test_group_and_key_overrides_apply_in_order():
    cfg = to_dict(load_config(ShareConfig, SHARE, ["model=fcn3", "model.width=64", "client.counts={0: 2, 5: 1}"]))
    assert cfg["model"] == {**cfg["model"], "name": "fcn", "depth": 3, "width": 64}
    assert cfg["client"]["counts"] == {0: 2, 5: 1}
    # a later group selection resets the group: model.width=64 is gone
    assert to_dict(load_config(ShareConfig, SHARE, ["model.width=64", "model=lenet5"]))["model"]["width"] is None


@pytest.mark.parametrize(
    "override,expected",
    [
        ("client.batchsize=4", ["batchsize", "batch_size", "client.batchsize"]),
        ("clinet.batch_size=4", ["clinet", "valid keys here: data, model, client, out"]),
        ("client.batch_size=abc", ["abc", "client.batch_size"]),
        ("data.name=imagenet", ["imagenet", "mnist, cifar100, cifar10, folder"]),
        ("model.name=lenet", ["lenet", "lenet5", "resnet152"]),
        ("model.activation=gelu", ["gelu", "relu, leaky_relu, silu, sigmoid, tanh"]),
        ("client.sampler=uniform", ["uniform", "random, unique, balanced, extreme, counts"]),
        ("client.bn_mode=training", ["training", "eval, train"]),
        ("model=lenet", ["no config 'lenet' in group 'model'", "lenet5"]),
        ("client.batch_size", ["must look like key=value"]),
    ],
)
def test_bad_overrides_are_explained(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(ShareConfig, SHARE, [override])
    for text in expected:
        assert text in str(info.value)


def test_typo_in_a_yaml_file_names_the_file(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("name: lenet5\nactivaton: silu\n")
    top = tmp_path / "top.yaml"
    top.write_text("defaults: {model: mine}\n")
    with pytest.raises(ConfigError, match=r"activaton.*mine\.yaml"):
        load_config(ShareConfig, top, config_dir=tmp_path)
    top.write_text("defaults: {modle: mine}\n")
    with pytest.raises(ConfigError, match="names group 'modle'"):
        load_config(ShareConfig, top, config_dir=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ShareConfig, tmp_path / "absent.yaml")


GROUP_FILES = sorted(p for group in ("data", "model", "client") for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_group_file_is_valid(path):
    cfg = load_config(ShareConfig, SHARE, [f"{path.parent.name}={path.stem}"])
    assert OmegaConf.is_readonly(cfg)


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config(ShareConfig, SHARE, ["model=resnet18", "client.sampler=balanced", "client.classes=2"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(ShareConfig, tmp_path / "config.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert "resnet18" in Path(tmp_path / "config.yaml").read_text()


@pytest.mark.parametrize("override", ["client.local_steps=5", "client.local_batch_size=4", "client.local_lr=0.5"])
def test_a_fedavg_setting_on_a_fedsgd_client_is_refused_not_ignored(override):
    key, value = override.split("=")
    with pytest.raises(ConfigError) as info:
        load_config(ShareConfig, SHARE, [override])  # the default client is FedSGD
    assert str(info.value) == (
        f"client: {key.split('.')[1]}={value} is a FedAvg setting, which kind=fedsgd ignores: "
        "set client.kind=fedavg, or leave it out"
    )
    local = load_config(ShareConfig, SHARE, ["client.kind=fedavg", override]).client  # where it applies
    assert str(getattr(local, key.split(".")[1])) == value


@pytest.mark.parametrize(
    "override, expected",
    [
        ("client.local_lr=inf", "the local learning rate must be > 0 and finite, got inf"),
        ("client.local_lr=nan", "the local learning rate must be > 0 and finite, got nan"),
        ("client.local_lr=0", "the local learning rate must be > 0 and finite, got 0.0"),
        ("client.local_lr=-0.1", "the local learning rate must be > 0 and finite, got -0.1"),
        ("client.local_steps=0", "local steps must be a positive integer, got 0"),
        ("client.local_batch_size=0", "local batch size must be a positive integer, got 0"),  # not read as "the batch"
    ],
)
def test_fedavg_settings_that_cannot_train_are_refused_at_config_time(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(ShareConfig, SHARE, ["client.kind=fedavg", override])
    assert str(info.value) == f"client: {expected}"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("client.batch_size=0", "client: batch_size must be >= 1, got 0"),
        ("client.chunk_size=0", "client: chunk_size must be >= 1 (or null: the whole batch), got 0"),
        ("attack.lr=inf", "attack: lr must be > 0 and finite, got inf"),
    ],
)
def test_counts_and_rates_that_cannot_run_are_refused_at_config_time(override, expected):
    from inversion.config import InvertConfig

    with pytest.raises(ConfigError) as info:
        load_config(InvertConfig, CONFIG_DIR / "invert" / "default.yaml", [override])
    assert str(info.value) == expected
