"""Typed configuration: structured omegaconf schemas, config groups and overrides.

A run's configuration is a dataclass schema (e.g. :class:`ShareConfig`) whose
sections (``data``, ``model``, ``client``) are *config groups*: each has YAML
files under ``configs/<group>/<name>.yaml``. Sources merge in this order:

1. the schema's defaults;
2. the group files named in the top-level YAML's ``defaults:`` mapping,
   e.g. ``defaults: {data: mnist, model: lenet5, client: default}``;
3. the rest of the top-level YAML;
4. command-line overrides, in order: ``group=name`` replaces that whole group by
   the schema default plus ``configs/<group>/<name>.yaml``; ``a.b=value`` sets a key.

Every unknown key, wrong type or unknown name (dataset, model, activation,
sampler, ...) raises :class:`ConfigError` naming the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf import errors as oc_errors

from inversion.attack.settings import AttackSettings
from inversion.data.samplers import SAMPLER_NAMES
from inversion.data.specs import DATASET_NAMES
from inversion.fl.client import PARAMETER_SETS
from inversion.fl.dp import DPSGD
from inversion.fl.local import LocalTraining
from inversion.fl.update import BN_MODES, UPDATE_KINDS
from inversion.models import ACTIVATIONS, MODEL_NAMES
from inversion.utils.choices import choices
from inversion.utils.fileio import atomic_write
from label_restore import METHOD_NAMES
from label_restore.aux import MISSING_CLASS_RULES

__all__ = [
    "CONFIG_DIR",
    "AttackSettings",
    "AuxConfig",
    "ClientConfig",
    "ConfigError",
    "DataConfig",
    "InvertConfig",
    "ModelConfig",
    "PriorConfig",
    "RestoreConfig",
    "RestoreSweep",
    "ShareConfig",
    "config_digest",
    "config_path",
    "load_config",
    "resolve",
    "save_config",
    "to_dict",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The shipped configs: package data of :mod:`inversion` (in a checkout, a link to the top-level ``configs/``)."""


def config_path(path: str | Path) -> Path:
    """``path`` as given if it exists (or is absolute); else a ``configs/...`` path is looked up among the
    shipped configs, so ``--config configs/invert/mnist_fcn3.yaml`` works from any directory."""
    candidate = Path(path)
    if candidate.exists() or candidate.is_absolute() or not candidate.parts or candidate.parts[0] != "configs":
        return candidate
    shipped = CONFIG_DIR.joinpath(*candidate.parts[1:])
    return shipped if shipped.exists() else candidate


DatasetName = choices("DatasetName", DATASET_NAMES)
ModelName = choices("ModelName", MODEL_NAMES)
Activation = choices("Activation", ACTIVATIONS)
SamplerName = choices("SamplerName", SAMPLER_NAMES)
Split = choices("Split", ("train", "test"))
BNMode = choices("BNMode", BN_MODES)
ParameterSet = choices("ParameterSet", PARAMETER_SETS)
UpdateKind = choices("UpdateKind", UPDATE_KINDS)
ImagesFrom = choices("ImagesFrom", ("all", "trained", "held_out"))
MethodName = choices("MethodName", METHOD_NAMES)
MissingClassRule = choices("MissingClassRule", MISSING_CLASS_RULES)


class ConfigError(ValueError):
    """A configuration value, key or file is invalid; the message says which and what is allowed."""


@dataclass
class DataConfig:
    """Where the client's images come from (see :func:`inversion.data.load_source`)."""

    name: DatasetName = DatasetName.mnist
    root: Optional[str] = None  # None: $GRADLEAK_DATA, else ./data
    split: Split = Split.test
    download: bool = True  # try torchvision's download when the files are not under root
    folder: Optional[str] = None  # for name=folder: an ImageFolder directory
    image_size: Optional[List[int]] = None  # folder only: resize to [H, W]
    channels: Optional[int] = None  # folder only: 1 or 3
    mean: Optional[List[float]] = None  # folder only: per-channel normalisation
    std: Optional[List[float]] = None


@dataclass
class ModelConfig:
    """The shared model (see :func:`inversion.models.build_model`)."""

    name: ModelName = ModelName.lenet5
    activation: Optional[Activation] = None  # None: the model's own default
    num_classes: Optional[int] = None  # None: the dataset's
    width: Optional[int] = None
    depth: Optional[int] = None
    final_bias: bool = True
    dropout: bool = False
    weights: Optional[str] = None  # a trained state_dict file (tensors only)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(
                f"num_classes must be a positive integer (or null for the dataset's), got {self.num_classes}"
            )


FEDAVG_ONLY = ("local_steps", "local_batch_size", "local_lr")
"""The :class:`ClientConfig` keys only a FedAvg client reads: with ``kind=fedsgd`` they must keep their defaults."""


@dataclass
class ClientConfig:
    """The FL client: its private batch and how it computes its update (FedSGD gradient or FedAvg delta)."""

    batch_size: int = 8
    sampler: SamplerName = SamplerName.random
    counts: Optional[Dict[int, int]] = None  # sampler=counts: {class: count}
    classes: Optional[int] = None  # sampler=balanced: number of classes n
    target_class: Optional[int] = None  # sampler=extreme: the class (None: random)
    replacement: bool = False
    seed: int = 0
    bn_mode: BNMode = BNMode.eval
    chunk_size: Optional[int] = None  # images per forward/backward; None: whole batch
    parameters: ParameterSet = ParameterSet.all  # final_layer: only the final layer's gradients
    synthetic_labels: bool = False  # untrained models only: labels drawn over C, independent of images
    images: ImagesFrom = ImagesFrom.all  # with model.weights from scripts/train.py: trained or held_out images only
    kind: UpdateKind = UpdateKind.fedsgd  # fedavg: local SGD steps, then the weight delta is shared
    local_steps: int = 1  # fedavg: S, local SGD steps (mini-batches in order, cycling over the batch)
    local_batch_size: Optional[int] = None  # fedavg: B, dividing batch_size; None: the whole batch
    local_lr: float = 0.1  # fedavg: the local learning rate
    dp_noise_multiplier: Optional[float] = None  # DP-SGD through Opacus: sigma; None: no DP-SGD
    dp_max_grad_norm: float = 1.0  # DP-SGD: per-sample clipping norm C (.inf: none, with sigma 0)
    dp_delta: float = 1.0e-5  # DP-SGD: delta of the reported (epsilon, delta)
    dp_noise_seed: Optional[int] = None  # DP-SGD: None: fresh OS entropy per run; fixed: reproducible, not private
    memory_check: bool = True  # refuse a client whose estimated memory exceeds what is free (inversion.utils.memory)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 (or null: the whole batch), got {self.chunk_size}")
        if self.kind == "fedsgd":  # a FedAvg setting given to a FedSGD client would be silently ignored
            fields = {f.name: f.default for f in dataclasses.fields(self) if f.name in FEDAVG_ONLY}
            ignored = [name for name, default in fields.items() if getattr(self, name) != default]
            if ignored:
                raise ValueError(
                    f"{ignored[0]}={getattr(self, ignored[0])} is a FedAvg setting, which kind=fedsgd "
                    "ignores: set client.kind=fedavg, or leave it out"
                )
        self.local_training()  # validates the FedAvg schedule and the DP-SGD settings now
        self.dp_sgd()

    def dp_sgd(self) -> DPSGD | None:
        """The client's DP-SGD settings (public), or None without DP-SGD."""
        if self.dp_noise_multiplier is None:
            return None
        return DPSGD(self.dp_noise_multiplier, self.dp_max_grad_norm, self.dp_delta)

    def local_training(self) -> LocalTraining | None:
        """The FedAvg schedule (public, recorded with the update), or None for FedSGD."""
        if self.kind == "fedsgd":
            return None
        local_batch_size = self.batch_size if self.local_batch_size is None else self.local_batch_size
        local = LocalTraining(self.local_steps, local_batch_size, self.local_lr)
        local.check(self.batch_size)
        return local


@dataclass
class AuxConfig:
    """The server's labelled auxiliary data, read only by the ``aux`` label method (a stronger server than iLRG's).

    Drawn at random from the images the client draws from, without the client's batch (a simulated client), or
    from ``data`` without the private batch's images (a saved update with ``private=``).
    """

    size: int = 2000  # N; all remaining images when fewer are left
    seed: int = 0  # the draw's seed
    # a class without auxiliary images: error, or overall_mean (the mean softmax of all auxiliary images)
    missing_classes: MissingClassRule = MissingClassRule.error

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be a positive integer, got {self.size}")


@dataclass
class ShareConfig:
    """``scripts/share_update.py``: sample a batch, compute and save the client's shared update."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    out: str = "runs/share"


@dataclass
class RestoreSweep:
    """What the benchmark sweeps over (an empty list keeps the single value of the data/model/client groups)."""

    methods: List[MethodName] = field(default_factory=lambda: [MethodName[m] for m in METHOD_NAMES])
    trials: int = 10
    datasets: List[str] = field(default_factory=list)  # data group names
    models: List[str] = field(default_factory=list)  # model group names
    activations: List[Activation] = field(default_factory=list)
    batch_sizes: List[int] = field(default_factory=list)
    samplers: List[SamplerName] = field(default_factory=list)
    defenses: List[str] = field(default_factory=lambda: ["none"])  # none, noise:STD, clip:NORM, sparsify:PCT
    fixed_model: bool = False  # False: a new model per trial (seed model.seed + trial)
    note: Optional[str] = None  # shown with the results, e.g. how the setting departs from the paper's


@dataclass
class RestoreConfig:
    """``scripts/restore_labels.py``: the data, model and client groups, plus the sweep."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    restore: RestoreSweep = field(default_factory=RestoreSweep)
    aux: AuxConfig = field(default_factory=AuxConfig)
    out: str = "runs/restore"


@dataclass
class PriorConfig:
    """Weights of the image priors (0: off)."""

    tv: float = 0.0
    l2: float = 0.0
    bn: float = 0.0
    augment: float = 0.0


@dataclass
class InvertConfig:
    """``scripts/invert.py``: client (simulated, or a saved update), label restoration, attack, evaluation.

    With ``update`` set, the attack reads that saved update file instead of simulating a client:
    ``data`` and ``client`` are not used, and the model comes from the update's public metadata
    (``model`` only for an update that names no architecture; ``model.weights`` for its state).
    ``private`` is the client's private-batch file, read only to score the result.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    attack: AttackSettings = field(default_factory=AttackSettings)
    priors: PriorConfig = field(default_factory=PriorConfig)
    aux: AuxConfig = field(default_factory=AuxConfig)
    update: Optional[str] = None
    private: Optional[str] = None
    out: str = "runs/invert"


def _explain(err: Exception, origin: str) -> ConfigError:
    """A ConfigError from an omegaconf error: what was wrong, where, and what is allowed."""
    message = str(err).split("\n")[0].strip()
    key = getattr(err, "full_key", None)
    where = f" (key '{key}'" + (f" in {origin})" if origin else ")") if key else (f" (in {origin})" if origin else "")
    hint = ""
    node = getattr(err, "object_type", None)
    if isinstance(err, (oc_errors.ConfigKeyError, oc_errors.ConfigAttributeError)) and dataclasses.is_dataclass(node):
        hint = "; valid keys here: " + ", ".join(f.name for f in dataclasses.fields(node))
    return ConfigError(f"{message}{where}{hint}")


def _group_file(group: str, name: str, config_dir: Path) -> Path:
    path = config_dir / group / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        raise ConfigError(
            f"no config '{name}' in group '{group}' ({path} does not exist); available: {', '.join(available) or 'none'}"
        )
    return path


def _merge(base: DictConfig, update: Any, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, update)
    except oc_errors.OmegaConfBaseException as err:
        raise _explain(err, origin) from None


def _load_yaml(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except Exception as err:  # yaml syntax errors come in several types
        raise ConfigError(f"cannot parse config file {path}: {err}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return loaded


def _select_group(cfg: DictConfig, schema: type, group: str, name: str, config_dir: Path) -> DictConfig:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    default = OmegaConf.structured(fields[group].default_factory())
    path = _group_file(group, name, config_dir)
    chosen = _merge(default, _load_yaml(path), str(path))
    cfg[group] = chosen
    return cfg


def _groups(schema: type) -> set[str]:
    """Names of the schema's sections that are config groups (dataclass-valued fields)."""
    return {f.name for f in dataclasses.fields(schema) if dataclasses.is_dataclass(f.default_factory)}


def load_config(
    schema: type,
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    config_dir: str | Path = CONFIG_DIR,
    base: DictConfig | None = None,
) -> DictConfig:
    """Build a validated config from a schema, an optional YAML file and overrides.

    Args:
        schema: the dataclass schema, e.g. :class:`ShareConfig`.
        path: top-level YAML file (may hold a ``defaults:`` mapping of group names).
        overrides: ``group=name`` and ``dotted.key=value`` strings, applied in order.
        config_dir: folder holding the group folders (default: the repo's ``configs/``).
        base: start from this config instead of the schema's defaults (e.g. to derive a variant).

    Returns:
        a read-only structured DictConfig.

    Raises:
        ConfigError: an unknown key, wrong type, unknown name or missing file.
    """
    config_dir = Path(config_dir)
    groups = _groups(schema)
    cfg = OmegaConf.structured(schema)
    if base is not None:
        cfg = _merge(cfg, base, "base config")
    if path is not None:
        path = config_path(path)
        body = _load_yaml(path)
        defaults = body.pop("defaults") if "defaults" in body else OmegaConf.create({})
        if not isinstance(defaults, DictConfig):
            raise ConfigError(f"'defaults' in {path} must map groups to names, e.g. defaults: {{data: mnist}}")
        for group, name in defaults.items():
            if group not in groups:
                raise ConfigError(f"'defaults' in {path} names group '{group}'; groups: {', '.join(sorted(groups))}")
            cfg = _select_group(cfg, schema, str(group), str(name), config_dir)
        cfg = _merge(cfg, body, str(path))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. client.batch_size=16) or group=name")
        if key in groups:
            cfg = _select_group(cfg, schema, key, value, config_dir)
        else:
            cfg = _merge(cfg, OmegaConf.from_dotlist([item]), "command line")
    OmegaConf.set_readonly(cfg, True)
    resolve(cfg)  # the dataclasses' own checks, now rather than deep inside a run
    return cfg


def resolve(cfg: DictConfig) -> Any:
    """The config as typed objects (its schema's dataclasses), validated by their ``__post_init__``.

    Raises:
        ConfigError: a value the dataclasses refuse (e.g. ``attack.max_steps=0``), naming the section.
    """
    for section, node in cfg.items():
        if isinstance(node, DictConfig):
            try:
                OmegaConf.to_object(node)
            except (ValueError, oc_errors.OmegaConfBaseException) as err:
                raise ConfigError(f"{section}: {str(err).splitlines()[0]}") from None
    return OmegaConf.to_object(cfg)


def to_dict(cfg: DictConfig | Any) -> dict:
    """Plain JSON-serialisable dict of a (sub)config; enum values become their names."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def config_digest(cfg: DictConfig, *, ignore: Sequence[str] = ("out", "data.root"), **extra: Any) -> str:
    """The sha256 of a resolved config without the dotted keys ``ignore`` (where files are, not what a run
    computes), together with ``extra`` facts (e.g. the digest of the input the run reads): a run's identity."""
    record = to_dict(cfg)
    for key in ignore:
        *path, last = key.split(".")
        node = record
        for part in path:
            node = node[part]
        node.pop(last)
    return hashlib.sha256(json.dumps({"config": record, **extra}, sort_keys=True).encode()).hexdigest()


def save_config(cfg: DictConfig, path: str | Path, *, header: str = "") -> None:
    """Write the resolved config as YAML (a record of exactly what ran), after ``header`` (comment lines)."""
    with atomic_write(path) as handle:
        handle.write((header + OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))).encode())
