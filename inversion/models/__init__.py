"""Classifier models for gradient-leakage experiments, built by name.

Every model is a :class:`ClassifierModel`: ``features`` (images to embedding) followed by
one final linear layer ``fc``, the layer whose gradient label-restoration attacks read.

Example:
    >>> model = build_model("lenet5", num_classes=10, in_channels=1, image_size=(28, 28))
    >>> final_layer(model).in_features
    84
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from inversion.models.activations import ACTIVATIONS
from inversion.models.base import ClassifierModel, footprint, forward_flops, init_conv_bn_
from inversion.models.convnet import convnet_features
from inversion.models.fcn import fcn_features
from inversion.models.lenet import lenet5_features, lenet_zhu_features, uniform_init_
from inversion.models.resnet import RESNET_LAYOUTS, resnet_features
from inversion.models.vgg import VGG_STAGE_DEPTHS, vgg_features
from inversion.utils.errors import InputError
from inversion.utils.fileio import load_tensor_file
from inversion.utils.memory import FLOAT_BYTES, available_memory, format_bytes

__all__ = [
    "ACTIVATIONS",
    "MODEL_NAMES",
    "ClassifierModel",
    "build_model",
    "final_layer",
    "footprint",
    "forward_flops",
    "load_weights",
]


@dataclass(frozen=True)
class _Architecture:
    """How to build one named model.

    Attributes:
        features: ``(name, in_channels, image_size, activation, **options) -> (features, M)``.
        options: the options (among width, depth, dropout) the model takes, with their defaults.
        default_activation: activation used when none is asked for.
        init: in-place initialisation of the whole model, final layer included; None keeps torch's.
    """

    features: Callable[..., tuple[nn.Module, int]]
    options: Mapping[str, Any] = field(default_factory=dict)
    default_activation: str = "relu"
    init: Callable[[nn.Module], None] | None = None


_ARCHITECTURES: dict[str, _Architecture] = {
    "fcn": _Architecture(fcn_features, {"width": 300, "depth": 3}),
    "lenet5": _Architecture(lenet5_features, init=init_conv_bn_),
    "lenet_zhu": _Architecture(lenet_zhu_features, default_activation="sigmoid", init=uniform_init_),
    "convnet": _Architecture(convnet_features, {"width": 64}),
    **{name: _Architecture(vgg_features, {"dropout": False}, init=init_conv_bn_) for name in VGG_STAGE_DEPTHS},
    **{name: _Architecture(resnet_features, {"width": 64}, init=init_conv_bn_) for name in RESNET_LAYOUTS},
}

MODEL_NAMES: tuple[str, ...] = tuple(_ARCHITECTURES)
"""Valid model names for :func:`build_model`."""


def _positive_int(value: Any, what: str) -> int:
    """``value`` as a plain int (so configs stay JSON-serialisable), if it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: Sequence[int],
    activation: str | None = None,
    seed: int = 0,
    width: int | None = None,
    depth: int | None = None,
    final_bias: bool = True,
    dropout: bool = False,
) -> ClassifierModel:
    r"""Build a named classifier, deterministically from ``seed``.

    The parameters are drawn inside :func:`torch.random.fork_rng` from the CPU generator
    seeded with ``seed``: the same arguments give bit-identical parameters, and the
    global RNG state is left untouched.

    Args:
        name: one of :data:`MODEL_NAMES`.
        num_classes: :math:`K`, the number of logits.
        in_channels: :math:`C` of the input images.
        image_size: :math:`(H, W)` of the input images.
        activation: one of :data:`ACTIVATIONS`; None picks the model's default
            (``"sigmoid"`` for ``lenet_zhu``, ``"relu"`` otherwise).
        seed: seed of the parameter initialisation.
        width: hidden width of ``fcn`` (default 300), base width of ``convnet`` and the
            ResNets (default 64). Other models refuse it.
        depth: number of linear layers of ``fcn`` (default 3, at least 2). Other models refuse it.
        final_bias: whether the final layer has a bias.
        dropout: Dropout(0.5) in the VGG extractor. Other models refuse ``True``.

    Returns:
        The model in training mode, with ``config`` holding the resolved build arguments
        (``build_model(**model.config)`` rebuilds it).

    Raises:
        ValueError: for an unknown name or activation, an option the model does not take,
            an invalid size or count, an input too small for the architecture, or parameters
            that alone need more than the memory available (counted before anything is allocated).

    Shape:
        - Input: :math:`(B, C, H, W)`
        - Output: :math:`(B, K)`
    """
    if name not in _ARCHITECTURES:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    arch = _ARCHITECTURES[name]
    activation = arch.default_activation if activation is None else activation
    if activation not in ACTIVATIONS:
        raise InputError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    requested = {"width": width, "depth": depth, "dropout": dropout or None}
    unused = [option for option, value in requested.items() if value is not None and option not in arch.options]
    if unused:
        takes = ", ".join(arch.options) or "none of width, depth, dropout"
        raise InputError(f"option {', '.join(unused)} is not used by {name} (it takes {takes})")
    options = {
        option: default if requested[option] is None else requested[option] for option, default in arch.options.items()
    }
    for option in ("width", "depth"):
        if option in options:
            options[option] = _positive_int(options[option], option)
    num_classes = _positive_int(num_classes, "num_classes")
    in_channels = _positive_int(in_channels, "in_channels")
    if len(image_size) != 2:
        raise InputError(f"image_size must be (H, W), got {image_size!r}")
    image_size = (_positive_int(image_size[0], "image height"), _positive_int(image_size[1], "image width"))

    config = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": list(image_size),
        "activation": activation,
        "seed": seed,
        "final_bias": bool(final_bias),
        **options,
    }

    def construct() -> ClassifierModel:
        features, embedding_dim = arch.features(name, in_channels, image_size, activation, **options)
        return ClassifierModel(features, embedding_dim, num_classes, final_bias=final_bias, config=config)

    with torch.random.fork_rng(devices=[]):
        _check_size(construct, name, options)
        torch.default_generator.manual_seed(seed)  # CPU only: parameters are created on the CPU
        model = construct()
        if arch.init is not None:
            arch.init(model)
    return model


def _check_size(construct: Callable[[], ClassifierModel], name: str, options: Mapping[str, Any]) -> None:
    """ValueError when the parameters alone of the model ``construct`` builds exceed the memory available,
    counted on the meta device: building the model would allocate and initialise them."""
    with torch.device("meta"):
        count = sum(p.numel() for p in construct().parameters())
    need, free = count * FLOAT_BYTES, available_memory("cpu")
    if need > free:
        sizes = ", ".join(f"{option}={value:,}" for option, value in options.items() if option in ("width", "depth"))
        raise InputError(
            f"model {name}{f' ({sizes})' if sizes else ''} has {count:,} parameters, {format_bytes(need)} "
            f"as float32, more than the {format_bytes(free)} of memory available: use a smaller model "
            "(width, depth) or smaller inputs"
        )


def final_layer(model: nn.Module) -> nn.Linear:
    """The final linear layer of a classifier, whose gradient carries the labels.

    Args:
        model: a :class:`ClassifierModel` (its ``fc``), or any module: the submodule named
            by its ``final_layer_name`` attribute (a dotted name, as for
            :meth:`~torch.nn.Module.get_submodule`) if it has one, else the last
            :class:`~torch.nn.Linear` in ``model.modules()`` (registration order).

    Returns:
        The layer, weight :math:`(K, M)`; its bias may be None.

    Raises:
        ValueError: if no such linear layer is found.
    """
    if isinstance(model, ClassifierModel):
        return model.fc
    how_to_mark = (
        "mark the layer by setting `model.final_layer_name = '<dotted submodule name>'` "
        "(e.g. 'classifier.2') on the model"
    )
    name = getattr(model, "final_layer_name", None)
    if name is not None:
        try:
            layer = model.get_submodule(name)
        except AttributeError as err:
            raise InputError(f"final_layer_name {name!r} names no submodule of {type(model).__name__}") from err
        if not isinstance(layer, nn.Linear):
            raise InputError(
                f"final_layer_name {name!r} names a {type(layer).__name__}, not an nn.Linear; {how_to_mark}"
            )
        return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError(f"{type(model).__name__} has no nn.Linear layer to use as the final layer; {how_to_mark}")
    return linears[-1]


def _listing(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a saved state_dict into ``model``, refusing anything but plain tensor files.

    The file is read by :func:`load_tensor_file` (``torch.load(..., map_location="cpu",
    weights_only=True)``), so it cannot run code when loaded and loads on the CPU wherever it
    was saved. It may hold the state_dict itself or a dict with the state_dict under ``"state_dict"``.

    Args:
        model: the model to load into; it must match the file exactly (keys and shapes).
        path: the weights file.

    Returns:
        ``model`` itself, with the weights loaded.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a plain state_dict file (e.g. it holds arbitrary pickled
            objects, or is truncated), its keys or shapes do not match the model, or it holds NaN
            or inf (the model is left unchanged).
    """
    loaded = load_tensor_file(path, "weights")
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InputError(f"{os.fspath(path)} holds no state_dict (a mapping from names to tensors)")
    expected = model.state_dict()
    missing = [key for key in expected if key not in loaded]
    unexpected = [key for key in loaded if key not in expected]
    mismatched = [
        f"{key} {tuple(loaded[key].shape)} vs {tuple(expected[key].shape)}"
        for key in expected
        if key in loaded and loaded[key].shape != expected[key].shape
    ]
    found = {"missing keys": missing, "unexpected keys": unexpected, "shape mismatches (file vs model)": mismatched}
    problems = [f"{label}: {_listing(keys)}" for label, keys in found.items() if keys]
    if problems:
        raise InputError(f"{os.fspath(path)} does not match {type(model).__name__}; " + "; ".join(problems))
    broken = next((key for key in expected if not torch.isfinite(loaded[key]).all()), None)
    if broken is not None:
        raise InputError(
            f"{os.fspath(path)} holds non-finite values (NaN or inf) in {broken!r}: these weights are "
            "broken (e.g. a diverged training run); use another weights file"
        )
    model.load_state_dict(loaded)
    return model
