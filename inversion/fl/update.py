"""What the server receives from one client: :class:`SharedUpdate` and its public :class:`UpdateMeta`.

The threat model lives in these types. A shared update holds only what an honest-but-curious
server sees in a round: parameter name -> the gradient of the client's mean cross-entropy (FedSGD)
or the weight delta of its local training (FedAvg, with its public schedule), the update kind, the
batch size K where the protocol reveals it, and public metadata (the model's architecture spec and
state digest, the input shape, the data normalisation, the client's batch-norm mode). What only the
client knows (images, labels, how they were sampled, seeds) is a :class:`~inversion.fl.private.PrivateBatch`,
saved to its own file and used only to score.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inversion.data.specs import SPECS
from inversion.fl._records import content_digest, load_record, model_digest, save_record
from inversion.fl.local import LocalTraining
from inversion.models import ClassifierModel, final_layer
from inversion.utils.errors import InputError

__all__ = ["BN_MODES", "UPDATE_KINDS", "SharedUpdate", "UpdateMeta"]

FORMAT = "gradleak.SharedUpdate"
VERSION = 2
BN_MODES = ("eval", "train")
UPDATE_KINDS = ("fedsgd", "fedavg")
"""``fedsgd``: the gradient of the mean cross-entropy over the client's batch, at the server's model;
``fedavg``: the weight delta of the client's local SGD steps (:mod:`inversion.fl.local`)."""
GRADIENT_DTYPES = (torch.float32, torch.float64)
"""The dtypes a shared tensor may have (integer ones are no gradients; float16/bfloat16 are refused, not upcast)."""


_OPTIONAL_TYPES = {"model": Mapping, "model_sha256": str, "weights": str, "dataset": str}
"""The type of each metadata field that may also be None (checked: update files are edited by hand)."""


def _numbers(values: Iterable[Any] | None, kind: type, what: str) -> tuple[Any, ...] | None:
    """``values`` as a tuple of ``kind`` (None stays None); ValueError naming ``what`` otherwise."""
    if values is None:
        return None
    problem = ValueError(f"{what} must be a list of {kind.__name__}s, got {values!r}")
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise problem
    try:
        return tuple(kind(v) for v in values)
    except (TypeError, ValueError):
        raise problem from None


@dataclass(frozen=True)
class UpdateMeta:
    """Public metadata of an update: what the server knows without seeing any private data.

    Attributes:
        model: the model's build arguments (:attr:`ClassifierModel.config`,
            ``build_model(**model)`` rebuilds it), or None for an architecture of your own.
        model_sha256: digest of the model state (:func:`~inversion.fl._records.model_digest`) the
            client computed the update on, or None when unknown.
        weights: a ``state_dict`` file of that model state (a relative path is relative to the update
            file's folder), for models not reproducible from ``model`` (trained, or federated
            rounds); or None.
        input_shape: (C, H, W) of one input, or None when unknown.
        mean, std: per-channel normalisation of [0, 1] images, or None when unknown.
        dataset: the task's dataset name (e.g. ``"mnist"``), or None; a name that is not a known dataset
            (:data:`~inversion.data.specs.SPECS`) needs ``mean`` and ``std``.
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics) on the client.
        local: a FedAvg update's local training schedule (:class:`~inversion.fl.local.LocalTraining`:
            steps S, local batch size B, learning rate η) where the protocol reveals it; None for FedSGD.
        notes: further public, JSON-serialisable facts (e.g. the defense, the round, the client id).
    """

    model: dict[str, Any] | None = None
    model_sha256: str | None = None
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    dataset: str | None = None
    bn_mode: str = "eval"
    local: LocalTraining | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, kind in _OPTIONAL_TYPES.items():
            value = getattr(self, name)
            if value is not None and not isinstance(value, kind):
                raise InputError(f"{name} must be a {kind.__name__} or None, got {value!r}")
        if not isinstance(self.notes, Mapping):
            raise InputError(f"notes must be a Mapping (of JSON-serialisable facts), got {self.notes!r}")
        object.__setattr__(self, "input_shape", _numbers(self.input_shape, int, "input_shape"))
        object.__setattr__(self, "mean", _numbers(self.mean, float, "mean"))
        object.__setattr__(self, "std", _numbers(self.std, float, "std"))
        if (self.mean is None) != (self.std is None) or len(self.mean or ()) != len(self.std or ()):
            raise InputError("mean and std must both be given, with one value per channel")
        if self.std is not None and any(not s > 0 for s in self.std):
            raise InputError(f"std must be > 0 per channel, got {self.std}")
        if self.input_shape is not None and (len(self.input_shape) != 3 or min(self.input_shape) < 1):
            raise InputError(f"input_shape must be (C, H, W) with three positive ints, got {self.input_shape}")
        if self.input_shape is not None and self.mean is not None and len(self.mean) != self.input_shape[0]:
            raise InputError(
                f"mean and std have {len(self.mean)} value(s) but the inputs {self.input_shape} have "
                f"{self.input_shape[0]} channel(s): give one value per channel"
            )
        if self.dataset is not None and self.dataset not in SPECS and self.mean is None:
            raise InputError(
                f"unknown dataset {self.dataset!r} and no normalisation: name one of "
                f"{', '.join(SPECS)}, or give mean= and std= for a dataset of your own"
            )
        if self.bn_mode not in BN_MODES:
            raise InputError(f"bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
        if self.local is not None and not isinstance(self.local, LocalTraining):
            object.__setattr__(self, "local", LocalTraining.from_json(self.local))

    @classmethod
    def describe(
        cls,
        model: nn.Module | None = None,
        *,
        dataset: str | None = None,
        input_shape: Iterable[int] | None = None,
        mean: Iterable[float] | None = None,
        std: Iterable[float] | None = None,
        **fields: Any,
    ) -> UpdateMeta:
        """Metadata filled in from a model (its spec and state digest) and a dataset name (its normalisation).

        Args:
            model: the model the update was computed on; a :class:`ClassifierModel` also gives its spec
                and input shape (before the dataset's).
            dataset: a named dataset (``mnist``, ``cifar10``, ``cifar100``): its mean, std and (for a model
                that does not give it) input shape unless given explicitly; any other name (your own data)
                needs ``mean`` and ``std``.
            input_shape, mean, std, fields: as the attributes; explicit values win.
        """
        spec = SPECS.get(dataset) if dataset is not None else None
        config = dict(model.config) if isinstance(model, ClassifierModel) else None
        loaded_from = config.pop("weights", None) if config is not None else None  # set by trained-model loaders
        if loaded_from and "weights" not in fields:
            fields["weights"] = str(Path(loaded_from).resolve())
        if input_shape is None and config is not None:  # what the model takes, before the dataset's own size
            input_shape = (config["in_channels"], *config["image_size"])
        if input_shape is None and spec is not None:
            input_shape = (spec.channels, *spec.image_size)
        return cls(
            model=config,
            model_sha256=None if model is None else model_digest(model),
            input_shape=None if input_shape is None else tuple(input_shape),
            mean=_numbers(mean, float, "mean") if mean is not None else (spec.mean if spec else None),
            std=_numbers(std, float, "std") if std is not None else (spec.std if spec else None),
            dataset=dataset,
            **fields,
        )

    def bounds(self) -> tuple[Tensor, Tensor]:
        """Valid normalised pixel range ``((0 - mean) / std, (1 - mean) / std)``, each (1, C, 1, 1).

        Raises:
            ValueError: the normalisation is unknown.
        """
        if self.mean is None:
            raise InputError(
                "the update does not say how its inputs were normalised; give mean and std "
                "(UpdateMeta.describe(dataset=...) or mean=..., std=...)"
            )
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (0.0 - mean) / std, (1.0 - mean) / std

    def denormalize(self, images: Tensor) -> Tensor:
        """(B, C, H, W) normalised inputs -> (B, C, H, W) on the [0, 1] scale (unclamped)."""
        if self.mean is None:
            raise InputError("the update does not say how its inputs were normalised; cannot show or score images")
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
        return images * std + mean

    def to_json(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            return (
                list(value)
                if isinstance(value, tuple)
                else value.to_json()
                if isinstance(value, LocalTraining)
                else value
            )

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UpdateMeta:
        if not isinstance(data, Mapping):
            raise InputError(f"update metadata must be a JSON object, got a {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown update metadata {unknown}; known: {sorted(known)}")
        return cls(**data)


def _batch_size(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise InputError(f"batch_size must be a positive integer (or None when the protocol hides it), got {value!r}")
    return int(value)


@dataclass
class SharedUpdate:
    """One client's update, as the server receives it. Holds nothing private.

    Attributes:
        gradients: parameter name (as in ``model.named_parameters()``) -> for ``fedsgd``, the gradient
            of the client's mean cross-entropy; for ``fedavg``, the weight delta
            :math:`\\theta_S - \\theta_0` of its local training (``meta.local``); shaped as the parameter,
            float32 or float64 (:data:`GRADIENT_DTYPES`).
        batch_size: K, the number of samples averaged over, or None when the protocol does not reveal it.
        meta: the public :class:`UpdateMeta`.
        kind: one of :data:`UPDATE_KINDS`.
        origin: the file it was loaded from (not saved; used to find ``meta.weights``).
    """

    gradients: dict[str, Tensor]
    batch_size: int | None
    meta: UpdateMeta = field(default_factory=UpdateMeta)
    kind: str = "fedsgd"
    origin: Path | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.batch_size = _batch_size(self.batch_size)
        if self.kind not in UPDATE_KINDS:
            raise InputError(f"unknown update kind {self.kind!r}; known: {', '.join(UPDATE_KINDS)}")
        if not isinstance(self.meta, UpdateMeta):
            raise InputError(f"meta must be an UpdateMeta, got {type(self.meta).__name__}")
        if (self.kind == "fedavg") != (self.meta.local is not None):
            raise InputError(
                "a fedavg update needs meta.local (its local steps, batch size and learning rate), "
                "and only a fedavg update has one"
            )
        if not self.gradients:
            raise InputError("a shared update needs at least one gradient")
        for name, grad in self.gradients.items():
            if not isinstance(grad, Tensor):
                raise InputError(f"gradient {name!r} is a {type(grad).__name__}, expected a torch.Tensor")
            if grad.dtype not in GRADIENT_DTYPES:
                raise InputError(
                    f"gradient {name!r} has dtype {grad.dtype}, expected float32 or float64: share the "
                    "gradients as computed, not cast to integers or half precision"
                )
            if not torch.isfinite(grad).all():
                raise InputError(f"gradient {name!r} holds non-finite values (NaN or inf)")

    @classmethod
    def from_gradients(
        cls,
        gradients: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
        batch_size: int | None,
        meta: UpdateMeta | None = None,
        *,
        check_sign: bool = True,
        **describe: Any,
    ) -> SharedUpdate:
        r"""A FedSGD update from *gradients* captured elsewhere (your own training loop or FL framework).

        A weight delta (:math:`\theta_{after} - \theta_{before}`, what FedAvg clients send) is not a gradient: wrap
        it with :meth:`from_weight_delta`. Where the maths allows, a delta passed here is refused: for the mean
        cross-entropy over K samples the final layer's bias gradient is :math:`g_c = \frac1K\sum_k (p_{kc} -
        y_{kc})`, strictly positive for every class absent from the batch, so at most K of its C entries are
        negative; a delta has the opposite sign, with at least C - K negative entries. This needs ``model=`` (to
        find the final layer), K, and K < C/2 to tell the two apart; it cannot catch a delta of a batch holding
        most classes, nor tell gradients from deltas without a final-layer bias. Noise added to the gradients
        (DP-SGD) can break the argument: pass ``check_sign=False`` for those.

        Args:
            gradients: name -> gradient, named as in ``model.named_parameters()`` (a ``_module.`` prefix on every
                name, as Opacus's ``GradSampleModule`` adds, is dropped), each the
                gradient of the *mean* cross-entropy over the batch.
            batch_size: K, or None when the protocol does not reveal it.
            meta: the public metadata; or leave it out and pass :meth:`UpdateMeta.describe`'s
                arguments (``model=``, ``dataset=``, ``input_shape=``, ``mean=``, ``std=``, ...).
            check_sign: refuse gradients whose sign says they are a weight delta (see above).

        Example:
            >>> update = SharedUpdate.from_gradients(dict(zip(names, grads)), batch_size=8, dataset="cifar100")
        """
        update = cls(_tensors(gradients), batch_size, _meta(meta, describe))
        if check_sign:
            _refuse_the_other_sign(update, describe.get("model"))
        return update

    @classmethod
    def from_weight_delta(
        cls,
        delta: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
        batch_size: int | None,
        *,
        local: LocalTraining,
        meta: UpdateMeta | None = None,
        check_sign: bool = True,
        **describe: Any,
    ) -> SharedUpdate:
        r"""A FedAvg update from a client's weight delta :math:`\Delta = \theta_{after} - \theta_{before}`.

        Args:
            delta: name -> the parameter's change over the client's local training, named as in
                ``model.named_parameters()`` (Opacus's ``_module.`` prefix on every name is dropped).
            batch_size: K, or None when the protocol does not reveal it.
            local: the local schedule the client ran (:class:`~inversion.fl.local.LocalTraining`: S steps of torch's
                SGD on mini-batches of B samples at learning rate η, with its momentum and weight decay, the samples
                in order or reshuffled every epoch); the attack unrolls it.
            meta: the public metadata (its ``local`` is set to ``local``); or :meth:`UpdateMeta.describe`'s
                arguments (``model=`` the global model the client started from, ``dataset=``, ...).
            check_sign: with ``model=`` and K, refuse a gradient passed as a delta (the mirror of
                :meth:`from_gradients`' check: a delta has at most K positive final-layer bias entries).

        Example:
            >>> before = {n: p.detach().clone() for n, p in model.named_parameters()}
            >>> ...  # the client's local training (or your framework's)
            >>> delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
            >>> update = SharedUpdate.from_weight_delta(delta, 8, local=LocalTraining(4, 2, 0.1), dataset="mnist")
        """
        if not isinstance(local, LocalTraining):
            raise InputError(f"local must be a LocalTraining (steps, batch_size, lr), got {type(local).__name__}")
        base = _meta(meta, {k: v for k, v in describe.items() if k != "local"})
        update = cls(_tensors(delta), batch_size, dataclasses.replace(base, local=local), kind="fedavg")
        if check_sign:
            _refuse_the_other_sign(update, describe.get("model"))
        return update

    @classmethod
    def from_states(
        cls,
        before: Mapping[str, Tensor],
        after: Mapping[str, Tensor],
        batch_size: int | None,
        *,
        local: LocalTraining,
        meta: UpdateMeta | None = None,
        check_sign: bool = True,
        **describe: Any,
    ) -> SharedUpdate:
        """A FedAvg update from the model's ``state_dict`` before and after the client's local training.

        The delta is taken over the parameters: the entries of ``model.named_parameters()`` when ``model=`` is
        given, else every floating-point entry of both states except batch-norm buffers (``running_mean``,
        ``running_var``). Otherwise as :meth:`from_weight_delta`.
        """
        old, new = _tensors(before), _tensors(after)
        model = describe.get("model")
        if isinstance(model, nn.Module):
            names = [name for name, _ in model.named_parameters()]
        else:
            buffers = ("running_mean", "running_var", "num_batches_tracked")
            names = [n for n in new if n in old and new[n].is_floating_point() and n.rsplit(".", 1)[-1] not in buffers]
        missing = [n for n in names if n not in old or n not in new]
        if missing:
            raise InputError(f"the states before and after lack parameters of the model: {missing[:5]}")
        delta = {n: new[n] - old[n] for n in names}  # IEEE subtraction: correctly rounded in the states' dtype
        return cls.from_weight_delta(delta, batch_size, local=local, meta=meta, check_sign=check_sign, **describe)

    @property
    def display_name(self) -> str:
        """How error messages name this update: ``"the update"``, with its file when it was loaded from one."""
        return "the update" if self.origin is None else f"the update in {self.origin}"

    @property
    def sha256(self) -> str:
        """Digest of everything saved (gradients, kind, K, metadata): names this exact update."""
        return content_digest(self._header(), self.gradients)

    def _header(self) -> dict[str, Any]:
        return {"kind": self.kind, "batch_size": self.batch_size, "meta": self.meta.to_json()}

    def check_compatible(self, model: nn.Module, *, require_all: bool = True) -> None:
        """Raise ValueError unless names and shapes match ``model.named_parameters()``.

        Args:
            model: the model the update is meant for.
            require_all: also require a gradient for every parameter (False for partial
                updates, e.g. the final layer only).
        """
        params = dict(model.named_parameters())
        missing = [n for n in params if n not in self.gradients]
        extra = [n for n in self.gradients if n not in params]
        if extra:
            raise InputError(f"{self.display_name} has gradients for parameters the model lacks: {extra[:5]}")
        if missing and require_all:
            raise InputError(f"{self.display_name} lacks gradients for model parameters: {missing[:5]}")
        for name, grad in self.gradients.items():
            if grad.shape != params[name].shape:
                raise InputError(
                    f"gradient {name!r} of {self.display_name} has shape {tuple(grad.shape)}, "
                    f"the model's parameter {tuple(params[name].shape)}"
                )

    def pseudo_gradients(self) -> dict[str, Tensor]:
        r"""The update as a gradient: FedSGD's gradients, or a FedAvg delta's :math:`-\Delta / (\eta \sum_s w_s)`.

        For FedAvg this is the weighted mean :math:`\sum_s w_s d_s / \sum_s w_s` of the S local mini-batch
        gradients (each at its own step's weights, plus weight decay's :math:`\lambda\theta_s`), with the momentum
        weights :math:`w_s` of :meth:`~inversion.fl.local.LocalTraining.step_weights` (all 1 without momentum: the
        plain mean; over whole local epochs every sample then counts equally, as in the FedSGD gradient).
        """
        return {name: self._as_gradient(tensor) for name, tensor in self.gradients.items()}

    @property
    def pseudo_gradient_scale(self) -> float:
        r"""What :meth:`pseudo_gradients` multiplies the shared tensors by: 1 for FedSGD, :math:`-1/(\eta \sum_s w_s)`
        for FedAvg."""
        local = self.meta.local  # None exactly for a FedSGD update (checked on creation)
        return 1.0 if local is None else -1.0 / (local.lr * float(local.step_weights().sum()))

    def _as_gradient(self, tensor: Tensor) -> Tensor:
        """One shared tensor as a (pseudo-)gradient (see :meth:`pseudo_gradients`)."""
        return tensor if self.meta.local is None else tensor * self.pseudo_gradient_scale

    def final_layer_gradients(self, model: nn.Module) -> tuple[Tensor, Tensor | None]:
        """(Pseudo-)gradients of the model's final linear layer: (grad_weight (C, M), grad_bias (C,) or None).

        For a FedAvg update, those of :meth:`pseudo_gradients`.

        Raises:
            ValueError: the update lacks the gradient of the layer's weight (or of its bias, when it
                has one), which label restoration reads.
        """
        layer = final_layer(model)
        names = {id(p): n for n, p in model.named_parameters()}
        roles = (("weight", layer.weight), ("bias", layer.bias))
        wanted = {role: names[id(param)] for role, param in roles if param is not None}
        for role, name in wanted.items():
            if name not in self.gradients:
                raise InputError(
                    f"{self.display_name} has no gradient for {name!r}, the final layer's {role}: label restoration "
                    "needs it (share all gradients or the final layer's); without it, attack with labels=joint, "
                    "shared or oracle"
                )
        grad_weight = self._as_gradient(self.gradients[wanted["weight"]])  # only these two are read: scale no more
        return grad_weight, (self._as_gradient(self.gradients[wanted["bias"]]) if "bias" in wanted else None)

    def summary(self) -> str:
        """A few human-readable lines: sizes and norms of what the server received."""
        total = sum(g.numel() for g in self.gradients.values())
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in self.gradients.values()))
        k = "not revealed" if self.batch_size is None else self.batch_size
        lines = [
            f"shared update ({self.kind}): K={k}, {len(self.gradients)} tensors, {total:,} values, "
            f"global L2 norm {norm:.4g}, sha256 {self.sha256[:12]}"
        ]
        width = max(len(n) for n in self.gradients)
        for name, grad in self.gradients.items():
            lines.append(f"  {name:<{width}}  {tuple(grad.shape)!s:<20} norm {float(grad.norm()):.4g}")
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Save atomically with a sha256 of the content; :meth:`load` reads it without unpickling code."""
        return save_record(path, FORMAT, VERSION, self._header(), self.gradients)

    @classmethod
    def load(cls, path: str | Path) -> SharedUpdate:
        """Load a saved update (tensors and plain data only, digest verified), onto the CPU.

        Raises:
            FileNotFoundError: no such file.
            ValueError: pickled objects (refused, for security), not an update file of this
                version, a checksum mismatch, or invalid content.
        """
        header, tensors = load_record(path, FORMAT, VERSION, "shared-update")
        missing = [key for key in ("kind", "batch_size", "meta") if key not in header]
        if missing:
            raise InputError(f"{path} holds an invalid shared update: its header has no {missing[0]!r}; write it again")
        try:
            return cls(
                tensors, header["batch_size"], UpdateMeta.from_json(header["meta"]), header["kind"], origin=Path(path)
            )
        except (TypeError, ValueError) as err:
            raise InputError(f"{path} holds an invalid shared update: {err}") from None


_WRAPPER_PREFIXES = ("_module.",)
"""Prefixes a wrapper adds to every parameter name: Opacus's ``GradSampleModule``."""


def _tensors(items: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]) -> dict[str, Tensor]:
    """Name -> a detached CPU copy, without a wrapper's prefix when every name carries it."""
    pairs = [
        (str(name), torch.as_tensor(t).detach().cpu().clone())
        for name, t in (items.items() if isinstance(items, Mapping) else items)
    ]
    for prefix in _WRAPPER_PREFIXES:
        if pairs and all(name.startswith(prefix) for name, _ in pairs):
            pairs = [(name[len(prefix) :], t) for name, t in pairs]
    return dict(pairs)


def _meta(meta: UpdateMeta | None, describe: Mapping[str, Any]) -> UpdateMeta:
    if meta is not None and describe:
        raise InputError("give either meta or UpdateMeta.describe's arguments, not both")
    return meta if meta is not None else UpdateMeta.describe(**describe)


def _refuse_the_other_sign(update: SharedUpdate, model: Any) -> None:
    """InputError when the final layer's bias entry of ``update`` has the sign of the other kind: for the mean
    cross-entropy over K samples a gradient has at most K negative entries (only a class in the batch can make one
    negative) and a weight delta, its opposite, at most K positive ones. Needs ``model`` (an ``nn.Module``, to find
    the final layer), K and the bias entry; otherwise nothing is checked."""
    if not isinstance(model, nn.Module) or update.batch_size is None:
        return
    layer = final_layer(model)
    names = {id(p): n for n, p in model.named_parameters()}
    name = names.get(id(layer.bias)) if layer.bias is not None else None
    if name is None or name not in update.gradients:
        return
    bias, k = update.gradients[name], update.batch_size
    if update.kind == "fedsgd" and int((bias < 0).sum()) > k:
        raise InputError(
            f"these are not the gradients of a mean cross-entropy over K={k} samples: {int((bias < 0).sum())} of "
            f"the final layer's {bias.numel()} bias gradients are negative, and only a class in the batch can make "
            "one negative; a weight delta (after - before) has this sign: pass it to SharedUpdate.from_weight_delta "
            "with its local schedule (or check_sign=False for noisy gradients)"
        )
    if update.kind == "fedavg" and int((bias > 0).sum()) > k:
        raise InputError(
            f"this is not the weight delta of SGD on a mean cross-entropy over K={k} samples: "
            f"{int((bias > 0).sum())} of the final layer's {bias.numel()} bias changes are positive, and only a class "
            "in the batch can make one positive; a gradient has this sign: pass it to SharedUpdate.from_gradients "
            "(or check_sign=False for noisy deltas)"
        )
