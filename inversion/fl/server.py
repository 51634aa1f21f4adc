"""The honest-but-curious server's side of an update: the model state the update was computed on."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from inversion.fl._records import model_digest
from inversion.fl.update import SharedUpdate
from inversion.models import ClassifierModel, build_model, load_weights
from inversion.utils.errors import InputError

__all__ = ["check_model", "model_from_update"]


def _weights_path(update: SharedUpdate, weights: str | Path | None) -> Path | None:
    if weights is not None:
        return Path(weights)
    if update.meta.weights is None:
        return None
    path = Path(update.meta.weights)
    if not path.is_absolute() and update.origin is not None:
        path = update.origin.parent / path
    return path


def _check_inputs(update: SharedUpdate, model: nn.Module) -> None:
    """Raise ValueError unless the update's input shape and normalisation fit the (C, H, W) a
    :class:`ClassifierModel` was built for (other modules do not say what they take)."""
    config = model.config if isinstance(model, ClassifierModel) else {}
    if "in_channels" not in config or "image_size" not in config:
        return
    takes = (int(config["in_channels"]), *(int(side) for side in config["image_size"]))
    shape, mean = update.meta.input_shape, update.meta.mean
    if shape is not None and tuple(shape) != takes:
        raise InputError(
            f"{update.display_name} is for inputs {tuple(shape)} (C, H, W) but the model takes {takes}: "
            "use the model the update was computed on"
        )
    if mean is not None and len(mean) != takes[0]:
        raise InputError(
            f"{update.display_name} normalises {len(mean)} channel(s) (mean/std) but the model takes "
            f"{takes[0]}: use the model the update was computed on"
        )


def check_model(update: SharedUpdate, model: nn.Module) -> None:
    """Raise ValueError unless ``model`` fits the update: parameter names and shapes, the input shape and
    number of channels (for a :class:`ClassifierModel`), and (when the update records it) the exact state
    the client computed the update on."""
    update.check_compatible(model, require_all=False)
    _check_inputs(update, model)
    expected = update.meta.model_sha256
    if expected is not None and model_digest(model) != expected:
        raise InputError(
            f"the model's state (sha256 {model_digest(model)[:12]}) is not the one the update was computed on "
            f"({expected[:12]}): load the weights the client used (--weights / weights=)"
        )


def model_from_update(update: SharedUpdate, *, weights: str | Path | None = None) -> ClassifierModel:
    """Rebuild the model an update was computed on, from its public metadata.

    Builds ``build_model(**update.meta.model)``, loads ``weights`` (or the update's own
    ``meta.weights``, relative to the update file) and checks the result with :func:`check_model`.

    Raises:
        ValueError: the update names no architecture (build your model and use it directly), its spec
            cannot be built, the weights file is unreadable or holds NaN or inf, or the rebuilt model
            is not the one the update was computed on.
        FileNotFoundError: the weights file does not exist.
    """
    spec = update.meta.model
    if spec is None:
        raise InputError(
            f"{update.display_name} names no model architecture (meta.model is empty): build your own "
            "model and pass it, or give a model config"
        )
    try:
        model = build_model(**spec)
    except (TypeError, ValueError) as err:
        raise InputError(f"the model spec of {update.display_name} cannot be built: {err}") from None
    path = _weights_path(update, weights)
    if path is not None:
        load_weights(model, path)
        model.config["weights"] = str(path)
    check_model(update, model)
    return model
