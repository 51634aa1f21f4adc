"""Configs: groups, overrides, resolution into typed objects, and errors that name the key and the valid choices."""

import pickle
from pathlib import Path

import pytest

from inversion.config import (
    CONFIG_DIR,
    ClientConfig,
    ConfigError,
    DataConfig,
    FederateConfig,
    InvertConfig,
    ModelConfig,
    RestoreConfig,
    ShareConfig,
    load_config,
    save_config,
    to_dict,
)

INVERT = CONFIG_DIR / "invert" / "default.yaml"

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
    sections = {"data": DataConfig, "model": ModelConfig, "client": ClientConfig}
    assert isinstance(cfg, ShareConfig) and isinstance(getattr(cfg, path.parent.name), sections[path.parent.name])


def test_a_config_resolves_into_typed_objects_that_write_back_the_same_record():
    cfg = load_config(ShareConfig, SHARE, ["model=fcn3", "client.counts={0: 2}", "client.sampler=counts"])
    assert isinstance(cfg.model, ModelConfig) and cfg.model.width == 300 and cfg.client.counts == {0: 2}
    assert cfg.client.sampler == "counts" and str(cfg.model.name) == "fcn"
    built = ShareConfig(  # the same config, built from Python: names as plain strings
        model=ModelConfig(name="fcn", depth=3, width=300),
        client=ClientConfig(sampler="counts", counts={0: 2}),
    )
    assert to_dict(built) == to_dict(cfg)
    assert load_config(ShareConfig, base=to_dict(cfg)) == cfg == load_config(ShareConfig, base=cfg)


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
    assert info.value.key == key
    assert str(info.value) == (
        f"{key}: {value} is a FedAvg setting, which kind=fedsgd ignores; set client.kind=fedavg, or leave it out"
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
        ("client.batch_size=0", "client.batch_size: must be >= 1, got 0"),
        ("client.chunk_size=0", "client.chunk_size: must be >= 1 (or null: the whole batch), got 0"),
        ("attack.lr=inf", "attack: lr must be > 0 and finite, got inf"),  # a plain ValueError: its section's key
    ],
)
def test_counts_and_rates_that_cannot_run_are_refused_at_config_time(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(InvertConfig, INVERT, [override])
    assert str(info.value) == expected and info.value.key == expected.partition(":")[0]


@pytest.mark.parametrize(
    "overrides, key, expected",
    [
        (["priors.nope=1"], "priors.nope", "unknown prior; choose from tv, l2, bn, augment"),
        (["priors.tv=-1"], "priors.tv", "the weight must be finite and >= 0 (0: off), got -1.0"),
        (["priors.l2=nan"], "priors.l2", "the weight must be finite and >= 0 (0: off), got nan"),
        (["private=p.pt"], "private", "scores a saved update; give update= too (a simulated client has its own)"),
        (["client.parameters=final_layer"], "client.parameters", "inversion matches the full gradient"),
        (["update=u.pt", "attack.labels=oracle"], "attack.labels", "'oracle' uses the true labels"),
        (["attack.labels=dlg"], "attack", "unknown label mode 'dlg'"),
    ],
)
def test_an_invert_config_error_names_its_key(overrides, key, expected):
    with pytest.raises(ConfigError) as info:
        load_config(InvertConfig, INVERT, overrides)
    assert info.value.key == key and str(info.value).startswith(f"{key}: {expected}")


def test_a_check_across_sections_names_the_key_it_refuses():
    path = CONFIG_DIR / "restore_labels" / "default.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(RestoreConfig, path, ["restore.defenses=[clip:4]", "client.parameters=final_layer"])
    assert str(info.value) == (
        "restore.defenses: clip defenses scale by the global norm of ALL gradients; set client.parameters=all for them"
    )
    fixed = load_config(RestoreConfig, path, ["restore.defenses=[clip:4]", "client.parameters=all"])
    assert [defense.name for defense in fixed.restore.parsed_defenses()] == ["clip"]


@pytest.mark.parametrize(
    "override, key",
    [
        ("client.parameters=final_layer", "client.parameters"),
        ("client.kind=fedavg", "client.kind"),
        ("client.synthetic_labels=true", "client.synthetic_labels"),
        ("federation.clients_per_round=5", "federation.clients_per_round"),
    ],
)
def test_a_federation_config_error_names_its_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(FederateConfig, CONFIG_DIR / "federate" / "default.yaml", [override])
    assert info.value.key == key and str(info.value).startswith(f"{key}: ")


def test_priors_and_methods_are_checked_against_the_live_registries():
    import numpy as np

    from label_restore import register_method, unregister_method
    from label_restore.result import make_result
    from priors import register_prior, unregister_prior

    def everyone_class_0(grad_weight, grad_bias, weight, bias, batch_size):
        counts = np.eye(len(grad_bias), dtype=np.int64)[0] * batch_size
        return make_result("class_0", counts, counts, counts > 0, batch_size)

    overrides = ["priors.l1=0.5", "attack.labels=class_0"]
    with pytest.raises(ConfigError, match="priors.l1: unknown prior"):
        load_config(InvertConfig, INVERT, overrides[:1])
    with pytest.raises(ConfigError, match="attack: unknown label mode 'class_0'"):
        load_config(InvertConfig, INVERT, overrides[1:])
    register_prior("l1", lambda: lambda x, **_: x.abs().mean())
    register_method("class_0", everyone_class_0)
    try:
        cfg = load_config(InvertConfig, INVERT, overrides)
        assert cfg.priors["l1"] == 0.5 and cfg.attack.labels == "class_0"
        restore = load_config(RestoreConfig, None, ["restore.methods=[ilrg, class_0]"]).restore
        assert restore.methods == ["ilrg", "class_0"]
    finally:
        unregister_prior("l1")
        unregister_method("class_0")
    with pytest.raises(ConfigError) as info:
        load_config(RestoreConfig, None, ["restore.methods=[ilrg, class_0]"])
    assert info.value.key == "restore.methods" and "unknown method 'class_0'; choose from ilrg, aux" in str(info.value)


def test_schemas_built_from_python_check_their_values_too():
    with pytest.raises(ConfigError) as info:
        ModelConfig(name="lenet")
    assert info.value.key == "name" and "unknown value 'lenet'; choose one of" in str(info.value)
    with pytest.raises(ConfigError, match=r"^batch_size: must be >= 1, got 0$"):
        ClientConfig(batch_size=0)
    assert ConfigError("must be >= 1", "batch_size").within("client").key == "client.batch_size"


def test_a_config_error_keeps_its_key_through_pickling():
    """A sweep's Ray worker sends its errors back pickled."""
    error = pickle.loads(pickle.dumps(ConfigError("unknown prior; choose from tv", "priors.nope")))
    assert error.key == "priors.nope" and str(error) == "priors.nope: unknown prior; choose from tv"
