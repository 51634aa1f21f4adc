"""The configuration schemas: one dataclass per config section and one per command, the only place that says which
keys a config holds, their defaults and the values they take.

The sections (``data``, ``model``, ``client``, ``aux``, ...) check their own keys in ``__post_init__``; a command's
schema (:class:`InvertConfig`, :class:`RestoreConfig`, ...) checks what needs more than one section. Every check
raises :class:`ConfigError` naming the key at fault (``"<key>: <what is wrong>; <what to do>"``), when the config
is resolved (:func:`inversion.config.resolve`) or a schema is built from Python: a run receives only configs that
can run. Names that code can register (label-restoration methods, label modes, image priors) are plain strings
checked against the registries as they are when the config is resolved.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from inversion.attack.labels import label_modes
from inversion.attack.settings import AttackSettings
from inversion.data.samplers import SAMPLER_NAMES
from inversion.data.specs import DATASET_NAMES
from inversion.fl.client import PARAMETER_SETS
from inversion.fl.defenses import Defense, parse_defense
from inversion.fl.dp import DPSGD
from inversion.fl.local import LocalTraining
from inversion.fl.update import BN_MODES, UPDATE_KINDS
from inversion.models import ACTIVATIONS, MODEL_NAMES
from inversion.utils.choices import Choice, choices
from inversion.utils.errors import InputError
from label_restore import METHOD_NAMES, available_methods
from label_restore.aux import MISSING_CLASS_RULES
from priors import PRIOR_NAMES, prior_names

__all__ = [
    "FEDAVG_ONLY",
    "OPTIMIZERS",
    "SET_BY_THE_SWEEP",
    "AblateConfig",
    "AttackSettings",
    "AuxConfig",
    "ClientConfig",
    "ConfigError",
    "DataConfig",
    "Experiment",
    "FederateConfig",
    "FederationSettings",
    "InvertConfig",
    "ModelConfig",
    "RestoreConfig",
    "RestoreSweep",
    "ShareConfig",
    "TrainConfig",
    "TrainExperiment",
    "TrainSettings",
    "TrainSweepConfig",
]


class ConfigError(InputError):
    """A configuration value, key or file is invalid (a user error: the scripts report it in one line).

    Attributes:
        key: the dotted key at fault (e.g. ``client.batch_size``, ``priors.nope``), or None when the error is not
            one key's (a missing file, a malformed override).

    Built as ``ConfigError(problem, key)``, its message is ``"<key>: <problem>"``, the problem saying what is wrong
    and what to do; an unknown key or a value of the wrong type keeps omegaconf's sentence, which names the key.
    """

    def within(self, section: str) -> ConfigError:
        """This error of a key of ``section`` with its full key (``section`` alone for an error of no key)."""
        return ConfigError(self.problem, section if self.key is None else f"{section}.{self.key}")


def _positive(value: int, key: str) -> None:
    if value < 1:
        raise ConfigError(f"must be >= 1, got {value}", key)


def _once_each(values: list, key: str) -> None:
    """ConfigError if ``values`` repeats one (a sweep would run, and count, the same runs twice)."""
    repeated = [value for i, value in enumerate(values) if value in values[:i]]
    if repeated:
        raise ConfigError(f"lists {repeated[0]!r} more than once; list each value once", key)


def _choice_fields(schema: type) -> dict[str, type[Choice]]:
    """The fields of a schema that hold a choice (or an optional one, or a list of them), with its type."""
    found = {}
    for name, hint in typing.get_type_hints(schema).items():
        for kind in (hint, *typing.get_args(hint)):
            if isinstance(kind, type) and issubclass(kind, Choice):
                found[name] = kind
    return found


def _choose(section: Any) -> None:
    """Every choice field of ``section`` given as a string (e.g. from Python) as its member; ConfigError naming the
    field for a value that is not one of the choices."""

    def member(kind: type[Choice], value: Any, key: str) -> Choice:
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"unknown value {value!r}; choose one of {', '.join(kind)}", key) from None

    for name, kind in _choice_fields(type(section)).items():
        value = getattr(section, name)
        if isinstance(value, list):
            setattr(section, name, [member(kind, v, name) for v in value])
        elif value is not None:
            setattr(section, name, member(kind, value, name))


OPTIMIZERS = ("sgd", "adam")

if TYPE_CHECKING:  # a type made at run time is no type to mypy; its members are strings, so a field holds a str
    DatasetName = str
    ModelName = str
    Activation = str
    SamplerName = str
    Split = str
    BNMode = str
    ParameterSet = str
    UpdateKind = str
    ImagesFrom = str
    MissingClassRule = str
    OptimizerName = str
else:  # the fields' types for omegaconf, which checks a config's value against the members
    DatasetName = choices("DatasetName", DATASET_NAMES)
    ModelName = choices("ModelName", MODEL_NAMES)
    Activation = choices("Activation", ACTIVATIONS)
    SamplerName = choices("SamplerName", SAMPLER_NAMES)
    Split = choices("Split", ("train", "test"))
    BNMode = choices("BNMode", BN_MODES)
    ParameterSet = choices("ParameterSet", PARAMETER_SETS)
    UpdateKind = choices("UpdateKind", UPDATE_KINDS)
    ImagesFrom = choices("ImagesFrom", ("all", "trained", "held_out"))
    MissingClassRule = choices("MissingClassRule", MISSING_CLASS_RULES)
    OptimizerName = choices("OptimizerName", OPTIMIZERS)


@dataclass
class DataConfig:
    """Where the client's images come from (see :func:`inversion.data.load_source`)."""

    name: DatasetName = "mnist"
    root: Optional[str] = None  # None: $GRADLEAK_DATA, else ./data
    split: Split = "test"
    download: bool = True  # try torchvision's download when the files are not under root
    folder: Optional[str] = None  # for name=folder: an ImageFolder directory
    image_size: Optional[List[int]] = None  # folder only: resize to [H, W]
    channels: Optional[int] = None  # folder only: 1 or 3
    mean: Optional[List[float]] = None  # folder only: per-channel normalisation
    std: Optional[List[float]] = None

    def __post_init__(self) -> None:
        _choose(self)


@dataclass
class ModelConfig:
    """The shared model (see :func:`inversion.models.build_model`)."""

    name: ModelName = "lenet5"
    activation: Optional[Activation] = None  # None: the model's own default
    num_classes: Optional[int] = None  # None: the dataset's
    width: Optional[int] = None
    depth: Optional[int] = None
    final_bias: bool = True
    dropout: bool = False
    weights: Optional[str] = None  # a trained state_dict file (tensors only)
    seed: int = 0

    def __post_init__(self) -> None:
        _choose(self)
        if self.num_classes is not None and self.num_classes < 1:
            raise ConfigError(
                f"must be a positive integer, got {self.num_classes}; leave it null for the dataset's classes",
                "num_classes",
            )


FEDAVG_ONLY = (
    "local_steps",
    "local_batch_size",
    "local_lr",
    "local_momentum",
    "local_weight_decay",
    "local_shuffle",
)
"""The :class:`ClientConfig` keys only a FedAvg client reads: with ``kind=fedsgd`` they must keep their defaults."""


@dataclass
class ClientConfig:
    """The FL client: its private batch and how it computes its update (FedSGD gradient or FedAvg delta).

    The FedAvg schedule and the DP-SGD settings are checked by :class:`~inversion.fl.local.LocalTraining` and
    :class:`~inversion.fl.dp.DPSGD`, whose errors name the setting in words (the key is the section's).
    """

    batch_size: int = 8
    sampler: SamplerName = "random"
    counts: Optional[Dict[int, int]] = None  # sampler=counts: {class: count}
    classes: Optional[int] = None  # sampler=balanced: number of classes n
    target_class: Optional[int] = None  # sampler=extreme: the class (None: random)
    replacement: bool = False
    seed: int = 0
    bn_mode: BNMode = "eval"
    chunk_size: Optional[int] = None  # images per forward/backward; None: whole batch
    parameters: ParameterSet = "all"  # final_layer: only the final layer's gradients
    synthetic_labels: bool = False  # untrained models only: labels drawn over C, independent of images
    images: ImagesFrom = "all"  # with model.weights from scripts/train.py: trained or held_out images only
    kind: UpdateKind = "fedsgd"  # fedavg: local SGD steps, then the weight delta is shared
    local_steps: int = 1  # fedavg: S, local SGD steps (mini-batches cycling over the batch, epoch after epoch)
    local_batch_size: Optional[int] = None  # fedavg: B (the last mini-batch of an epoch may be partial); None: K
    local_lr: float = 0.1  # fedavg: the local learning rate
    local_momentum: float = 0.0  # fedavg: torch SGD momentum
    local_weight_decay: float = 0.0  # fedavg: torch SGD weight decay
    local_shuffle: bool = False  # fedavg: the client reshuffles its batch every local epoch (private order)
    dp_noise_multiplier: Optional[float] = None  # DP-SGD through Opacus: sigma; None: no DP-SGD
    dp_max_grad_norm: float = 1.0  # DP-SGD: per-sample clipping norm C (.inf: none, with sigma 0)
    dp_delta: float = 1.0e-5  # DP-SGD: delta of the reported (epsilon, delta)
    dp_noise_seed: Optional[int] = None  # DP-SGD: None: fresh OS entropy per run; fixed: reproducible, not private
    memory_check: bool = True  # refuse a client whose estimated memory exceeds what is free (inversion.utils.memory)

    def __post_init__(self) -> None:
        _choose(self)
        _positive(self.batch_size, "batch_size")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"must be >= 1 (or null: the whole batch), got {self.chunk_size}", "chunk_size")
        if self.kind == "fedsgd":  # a FedAvg setting given to a FedSGD client would be silently ignored
            defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in FEDAVG_ONLY}
            ignored = [name for name, default in defaults.items() if getattr(self, name) != default]
            if ignored:
                raise ConfigError(
                    f"{getattr(self, ignored[0])} is a FedAvg setting, which kind=fedsgd ignores; "
                    "set client.kind=fedavg, or leave it out",
                    ignored[0],
                )
        if self.synthetic_labels and self.replacement:
            raise ConfigError(
                "is not allowed with synthetic_labels, which draws distinct images; set client.replacement=false",
                "replacement",
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
        return LocalTraining(
            self.local_steps,
            local_batch_size,
            self.local_lr,
            momentum=self.local_momentum,
            weight_decay=self.local_weight_decay,
            shuffle=self.local_shuffle,
        )


def _check_client_model(model: ModelConfig, client: ClientConfig) -> None:
    """Labels drawn independently of the images (``client.synthetic_labels``) suit untrained models only.

    (``client.images=trained`` without ``model.weights`` is refused when the client runs: the shipped configs of
    trained models leave the checkpoint to the command line.)"""
    if client.synthetic_labels and model.weights:
        raise ConfigError(
            "is only valid for untrained models: a trained model's gradients depend on whether each label matches "
            "its image; use real labels, or drop model.weights",
            "client.synthetic_labels",
        )


@dataclass
class AuxConfig:
    """The server's labelled auxiliary data, read by the label methods that need it (``aux``: a stronger server
    than iLRG's; :func:`inversion.restore.needs_auxiliary`).

    Drawn at random from the images the client draws from, without the client's batch (a simulated client), or
    from ``data`` without the private batch's images (a saved update with ``private=``).
    """

    size: int = 2000  # N; all remaining images when fewer are left
    seed: int = 0  # the draw's seed
    # a class without auxiliary images: error, or overall_mean (the mean softmax of all auxiliary images)
    missing_classes: MissingClassRule = "error"

    def __post_init__(self) -> None:
        _choose(self)
        if self.size < 1:
            raise ConfigError(f"must be a positive number of images, got {self.size}", "size")


@dataclass
class ShareConfig:
    """``scripts/share_update.py``: sample a batch, compute and save the client's shared update."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    out: str = "runs/share"

    def __post_init__(self) -> None:
        _check_client_model(self.model, self.client)


@dataclass
class RestoreSweep:
    """What the benchmark sweeps over (an empty list keeps the single value of the data/model/client groups)."""

    methods: List[str] = field(default_factory=lambda: list(METHOD_NAMES))  # label_restore.available_methods()
    trials: int = 10
    datasets: List[str] = field(default_factory=list)  # data group names
    models: List[str] = field(default_factory=list)  # model group names
    activations: List[Activation] = field(default_factory=list)
    batch_sizes: List[int] = field(default_factory=list)
    samplers: List[SamplerName] = field(default_factory=list)
    defenses: List[str] = field(default_factory=lambda: ["none"])  # none, noise:STD, clip:NORM, sparsify:PCT
    fixed_model: bool = False  # False: a new model per trial (seed model.seed + trial)
    note: Optional[str] = None  # shown with the results, e.g. how the setting departs from the paper's

    def __post_init__(self) -> None:
        _choose(self)
        _positive(self.trials, "trials")
        methods = available_methods()
        if not self.methods:
            raise ConfigError(f"is empty; name at least one of {', '.join(methods)}", "methods")
        unknown = [m for m in self.methods if m not in methods]
        if unknown:
            raise ConfigError(f"unknown method {unknown[0]!r}; choose from {', '.join(methods)}", "methods")
        _once_each(self.methods, "methods")
        bad = [k for k in self.batch_sizes if k < 1]
        if bad:
            raise ConfigError(
                f"holds {bad[0]}, but a batch size K is a positive number of images; "
                "leave the list empty for client.batch_size",
                "batch_sizes",
            )
        self.parsed_defenses()

    def parsed_defenses(self) -> list[Defense]:
        """The defenses applied to every update (``none`` alone for an empty list)."""
        try:
            return [parse_defense(d) for d in self.defenses or ["none"]]
        except ValueError as err:
            raise ConfigError(str(err), "defenses") from None


@dataclass
class RestoreConfig:
    """``scripts/restore_labels.py``: the data, model and client groups, plus the sweep."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    restore: RestoreSweep = field(default_factory=RestoreSweep)
    aux: AuxConfig = field(default_factory=AuxConfig)
    out: str = "runs/restore"

    def __post_init__(self) -> None:
        _check_client_model(self.model, self.client)
        if any(d.name == "clip" for d in self.restore.parsed_defenses()) and self.client.parameters != "all":
            raise ConfigError(
                "clip defenses scale by the global norm of ALL gradients; set client.parameters=all for them",
                "restore.defenses",
            )


def _built_in_priors() -> dict[str, float]:
    return dict.fromkeys(PRIOR_NAMES, 0.0)


@dataclass
class InvertConfig:
    """``scripts/invert.py``: client (simulated, or a saved update), label restoration, attack, evaluation.

    With ``update`` set, the attack reads that saved update file instead of simulating a client:
    ``data`` and ``client`` are not used, and the model comes from the update's public metadata
    (``model`` only for an update that names no architecture; ``model.weights`` for its state).
    ``private`` is the client's private-batch file, read only to score the result. ``priors`` maps the name
    of a registered image prior (:func:`priors.prior_names`) to its weight (0: off).
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    attack: AttackSettings = field(default_factory=AttackSettings)
    priors: Dict[str, float] = field(default_factory=_built_in_priors)
    aux: AuxConfig = field(default_factory=AuxConfig)
    update: Optional[str] = None
    private: Optional[str] = None
    out: str = "runs/invert"

    def __post_init__(self) -> None:
        names = prior_names()
        for name, weight in self.priors.items():
            if name not in names:
                raise ConfigError(f"unknown prior; choose from {', '.join(names)}", f"priors.{name}")
            if not 0 <= weight < math.inf:
                raise ConfigError(f"the weight must be finite and >= 0 (0: off), got {weight}", f"priors.{name}")
        if self.update is None and self.private is not None:
            raise ConfigError("scores a saved update; give update= too (a simulated client has its own)", "private")
        if self.update is None and self.client.parameters != "all":
            raise ConfigError("inversion matches the full gradient; set client.parameters=all", "client.parameters")
        if self.update is None:  # a saved update's client is not this config's
            _check_client_model(self.model, self.client)
        if self.attack.labels == "oracle" and self.update is not None and self.private is None:
            raise ConfigError("'oracle' uses the true labels; give the private batch (private=...)", "attack.labels")


@dataclass
class Experiment:
    """One inversion setting of an ablation."""

    name: str = "experiment"
    config: str = "configs/invert/default.yaml"  # relative to the repository, or absolute
    overrides: List[str] = field(default_factory=list)


@dataclass
class AblateConfig:
    """``scripts/ablate.py``: experiments x batch sizes x seeds x label modes."""

    experiments: List[Experiment] = field(default_factory=lambda: [Experiment()])
    batch_sizes: List[int] = field(default_factory=list)  # empty: each experiment's own client.batch_size
    seeds: List[int] = field(default_factory=lambda: [0])
    modes: List[str] = field(default_factory=lambda: ["oracle", "ilrg", "joint", "shared"])  # label modes
    baseline: str = "shared"  # the paired gain of every mode is reported over this one
    out: str = "runs/ablate"

    def __post_init__(self) -> None:
        for key in ("experiments", "seeds", "modes"):
            if not getattr(self, key):
                raise ConfigError("is empty; list at least one entry", key)
        modes = label_modes()
        unknown = [m for m in self.modes if m not in modes]
        if unknown:
            raise ConfigError(f"unknown label mode {unknown[0]!r}; choose from {', '.join(modes)}", "modes")
        for key in ("modes", "seeds", "batch_sizes"):
            _once_each(getattr(self, key), key)
        for k in self.batch_sizes:
            _positive(k, "batch_sizes")
        if self.baseline not in self.modes:
            raise ConfigError(
                f"{self.baseline!r} is not among the modes ({', '.join(self.modes)}); add it to modes, or choose one",
                "baseline",
            )


@dataclass
class TrainSettings:
    """How the model is trained, and which images it sees."""

    epochs: int = 1
    batch_size: int = 64  # images per step; the last incomplete batch of an epoch's shuffle is skipped
    optimizer: OptimizerName = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    seed: int = 0  # the split, the per-epoch shuffles and torch's RNG during training
    checkpoint_epochs: Optional[List[int]] = None  # epochs whose state_dict is saved (0: untrained); null: [0, epochs]
    held_out: float = 0.2  # fraction of the images kept out of training, for evaluation
    max_images: Optional[int] = None  # use a seeded sample of at most this many images of the source

    def __post_init__(self) -> None:
        _choose(self)
        _positive(self.epochs, "epochs")
        _positive(self.batch_size, "batch_size")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"must be > 0 and finite, got {self.lr}", "lr")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"must be in [0, 1), got {self.momentum}", "momentum")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"must be finite and >= 0, got {self.weight_decay}", "weight_decay")
        outside = [e for e in self.checkpoint_epochs or () if not 0 <= e <= self.epochs]
        if outside:
            raise ConfigError(f"must lie in 0..epochs={self.epochs}, got {outside}", "checkpoint_epochs")
        if not 0 <= self.held_out < 1:
            raise ConfigError(f"must be a fraction in [0, 1), got {self.held_out}", "held_out")
        if self.max_images is not None and self.max_images < 2:
            raise ConfigError(f"must be >= 2 or null (all images), got {self.max_images}", "max_images")

    @property
    def saved_epochs(self) -> list[int]:
        """The epochs whose checkpoint this run writes, sorted."""
        return sorted(set([0, self.epochs] if self.checkpoint_epochs is None else self.checkpoint_epochs))


@dataclass
class TrainConfig:
    """``scripts/train.py``: train a ``model`` on the ``data`` group's images as ``train`` says; files in ``out``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainSettings = field(default_factory=TrainSettings)
    out: str = "runs/train"


SET_BY_THE_SWEEP = ("out", "train.seed", "model.seed")
"""The keys of a training run that its sweep sets (seed and folder); an experiment's overrides may not name them."""
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
"""An experiment's name: a folder name in ``out`` that no result file or ``previous/`` can clash with."""


@dataclass
class TrainExperiment:
    """One training setting of a training sweep."""

    name: str = "default"  # its runs' folder in out: <out>/<name>/seed<S>/
    config: str = "configs/train/default.yaml"  # relative to the repository, or absolute
    overrides: List[str] = field(default_factory=list)


@dataclass
class TrainSweepConfig:
    """``scripts/train.py --sweep``: every experiment trained once per seed (``train.seed`` = ``model.seed``)."""

    experiments: List[TrainExperiment] = field(default_factory=lambda: [TrainExperiment()])
    seeds: List[int] = field(default_factory=lambda: [0])
    out: str = "runs/train/sweep"

    def __post_init__(self) -> None:
        for key in ("experiments", "seeds"):
            if not getattr(self, key):
                raise ConfigError("is empty; list at least one entry", key)
        _once_each([experiment.name for experiment in self.experiments], "experiments")
        _once_each(self.seeds, "seeds")
        for experiment in self.experiments:
            if not _FOLDER_NAME.fullmatch(experiment.name) or experiment.name == "previous":
                raise ConfigError(
                    f"experiment name {experiment.name!r} names a folder in out: use letters, digits, _ and - "
                    "(not 'previous')",
                    "experiments",
                )
            clash = [o for o in experiment.overrides if o.partition("=")[0] in SET_BY_THE_SWEEP]
            if clash:
                raise ConfigError(
                    f"experiment {experiment.name!r} overrides {clash[0]!r}; {', '.join(SET_BY_THE_SWEEP)} are set "
                    "by the sweep (seeds, out): leave it out",
                    "experiments",
                )


@dataclass
class FederationSettings:
    """The federation: N clients with disjoint partitions, R rounds of FedSGD at learning rate η."""

    clients: int = 4  # N: virtual clients (Flower SuperNodes), each with its own partition
    rounds: int = 3  # R
    lr: float = 0.1  # η, public: sent to the clients in the train config
    partition_seed: int = 0  # seed of the random split of the data into N disjoint partitions
    clients_per_round: Optional[int] = None  # None: all N every round (else FedAvg samples this many)
    cpus_per_client: float = 1.0  # Ray resources per client (clients run in parallel on the free cores)
    verbose: bool = False  # show Flower's and Ray's logs and the clients' output

    def __post_init__(self) -> None:
        _positive(self.clients, "clients")
        _positive(self.rounds, "rounds")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"must be > 0 and finite (the server divides by it), got {self.lr}", "lr")
        if self.clients_per_round is not None and not 1 <= self.clients_per_round <= self.clients:
            raise ConfigError(
                f"must be in 1..{self.clients} or null (all), got {self.clients_per_round}", "clients_per_round"
            )
        if not self.cpus_per_client > 0:
            raise ConfigError(f"must be > 0, got {self.cpus_per_client}", "cpus_per_client")


@dataclass
class FederateConfig:
    """``scripts/federate.py``: the data, the shared model, the clients' batches, the federation, ``out``.

    ``client.batch_size`` is K; the client's sampler draws within its own partition, seeded by
    ``[client.seed, round, partition id]``; ``client.bn_mode`` is sent to the clients as part of the
    protocol. ``client.parameters`` must be ``all`` (FedSGD shares the whole model), ``client.kind`` ``fedsgd``
    and ``client.synthetic_labels`` false (clients train on their real labels). ``client.dp_noise_multiplier``
    σ, ``client.dp_max_grad_norm`` C and ``client.dp_delta`` δ make every client run DP-SGD (no
    ``client.chunk_size``, no batch norm); ``client.dp_noise_seed`` fixes its noise (reproducible, and
    removable by whoever knows the seed); null draws it from OS entropy for every client and round.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    federation: FederationSettings = field(default_factory=FederationSettings)
    out: str = "runs/federate"
    overwrite: bool = False  # replace the outputs of an earlier federation in out

    def __post_init__(self) -> None:
        client = self.client
        if client.parameters != "all":
            raise ConfigError(
                "must be 'all' in a federation: FedSGD clients share the whole model", "client.parameters"
            )
        if client.kind != "fedsgd":
            raise ConfigError(
                "the Flower federation runs FedSGD clients; set client.kind=fedsgd (FedAvg clients are "
                "simulated by scripts/share_update.py and scripts/invert.py)",
                "client.kind",
            )
        if client.synthetic_labels:
            raise ConfigError(
                "is not allowed in a federation: clients train on their real labels", "client.synthetic_labels"
            )
        chunk = client.chunk_size
        if chunk is not None and client.bn_mode == "train" and chunk < client.batch_size:
            raise ConfigError(
                f"must be null or >= client.batch_size with bn_mode=train, got {chunk}", "client.chunk_size"
            )
        if chunk is not None and client.dp_noise_multiplier is not None:
            raise ConfigError(
                "must be null with DP-SGD (client.dp_noise_multiplier): its per-sample gradients are computed over "
                "the whole batch",
                "client.chunk_size",
            )
