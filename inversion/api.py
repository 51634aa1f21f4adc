"""The Python API: attack a shared update in a few lines, from a notebook or your own code.

    import inversion as gl
    update, private = gl.load_update("runs/share/update.pt"), gl.load_private("runs/share/private.pt")
    model = gl.model_from_update(update)
    result = gl.invert(update, model, labels="ilrg", preset="default")
    print(gl.score(result, private)["mean"])

The attack (:func:`invert`) and label restoration (:func:`restore_from_update`) only ever receive
the public :class:`~inversion.fl.update.SharedUpdate`; the client's
:class:`~inversion.fl.private.PrivateBatch` reaches :func:`score` alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inversion.attack import InversionResult, get_attack, plan_labels
from inversion.attack.settings import resolve_device
from inversion.config import InvertConfig, load_config
from inversion.config.presets import PRESET_DIR, load_preset
from inversion.data import SPECS, default_data_root
from inversion.evaluation import LPIPSMetric, evaluate_reconstruction
from inversion.fl.private import PrivateBatch
from inversion.fl.server import check_model
from inversion.fl.simulate import ClientRun, check_attack_memory, simulate_client
from inversion.fl.update import SharedUpdate, UpdateMeta
from inversion.models import ClassifierModel, footprint
from inversion.restore.auxiliary import AuxiliaryData
from inversion.utils.errors import InputError
from label_restore import RestorationResult, counts_from_labels, label_metrics

__all__ = ["Reconstruction", "invert", "load_private", "load_update", "score", "simulate"]


def load_update(path: str | Path) -> SharedUpdate:
    """A saved :class:`SharedUpdate` (checksum verified; no pickled code is ever run)."""
    return SharedUpdate.load(path)


def load_private(path: str | Path) -> PrivateBatch:
    """A saved :class:`PrivateBatch`, the client's ground truth (checksum verified)."""
    return PrivateBatch.load(path)


def simulate(config: str | Path = "default", *overrides: str, progress: bool = False) -> ClientRun:
    """Simulate a client of a shipped inversion setting (a preset name) or an inversion config file.

    Args:
        config: a preset name (``configs/invert/<name>.yaml``) or a YAML path.
        overrides: ``key=value`` / ``group=name`` strings, e.g. ``"client.batch_size=4"``.

    Returns:
        a :class:`~inversion.fl.simulate.ClientRun`: ``.update`` (public), ``.private``, ``.model``.
    """
    path = Path(config) if str(config).endswith((".yaml", ".yml")) else PRESET_DIR / f"{config}.yaml"
    return simulate_client(load_config(InvertConfig, path, overrides), progress=progress)


@dataclass
class Reconstruction:
    """What :func:`invert` returns.

    Attributes:
        images: the reconstructed inputs, normalised, (K, C, H, W), on the CPU.
        labels: the labels the dummies ended with, (K,) int64.
        loss: the gradient-matching loss of the returned images.
        label_mode: how the labels were chosen (a restoration method, ``given``, ``joint``, ``shared``).
        restoration: the label-restoration result for restoration modes, else None.
        attack: the attack's full result (restarts, steps, time, snapshots).
        update_sha256: the attacked update's digest (so it is only scored against its own private batch).
        meta: the update's public metadata, with the normalisation and input shape the attack used (the
            update's, else those of its dataset, else the preset dataset's).
    """

    images: Tensor
    labels: Tensor
    loss: float
    label_mode: str
    restoration: RestorationResult | None
    attack: InversionResult
    update_sha256: str
    meta: UpdateMeta

    def unit_images(self) -> Tensor:
        """The reconstruction in [0, 1], (K, C, H, W), ready to show."""
        return self.meta.denormalize(self.images).clamp(0, 1)


def invert(
    update: SharedUpdate,
    model: nn.Module,
    *,
    labels: str | Tensor | None = None,
    preset: str | Path = "default",
    priors: dict[str, float] | None = None,
    batch_size: int | None = None,
    aux: AuxiliaryData | None = None,
    progress: bool = True,
    **settings: Any,
) -> Reconstruction:
    """Reconstruct the private batch behind a shared update.

    Args:
        update: the shared update (public data only).
        model: the server's model (not modified).
        labels: a label mode (``"ilrg"`` or another restoration method, ``"joint"``, ``"shared"``), or
            known labels as a (K,) tensor; None: the preset's.
        preset: the shipped attack setting (:func:`~inversion.config.presets.preset_names`): optimisation,
            priors, and the pixel box when the update carries neither its normalisation nor a known dataset name.
        priors: ``{name: weight}`` replacing the preset's priors.
        batch_size: K, when the update does not reveal it.
        aux: the server's labelled auxiliary data, for label methods that read it, e.g. ``labels="aux"``
            (:func:`~inversion.restore.auxiliary.draw_auxiliary`, :func:`~inversion.restore.needs_auxiliary`).
        progress: show a progress bar.
        settings: :class:`AttackSettings` fields to change, e.g. ``max_steps=500, device="cuda"``.

    Returns:
        a :class:`Reconstruction`.

    Raises:
        ValueError: the model does not fit the update (:func:`~inversion.fl.server.check_model`), known labels
            are not K integers in [0, C), the attack would need more memory than the device has free
            (``attack.memory_check``; :class:`~inversion.models.ClassifierModel` models), or another input is invalid.
    """
    chosen = load_preset(preset)
    attack = dataclasses.replace(chosen.settings, **settings)
    if isinstance(labels, str):
        attack = dataclasses.replace(attack, labels=labels)
    mode, known = ("oracle", labels) if isinstance(labels, Tensor) else (str(attack.labels), None)
    if mode == "oracle" and known is None:
        raise InputError("labels='oracle' needs the true labels: pass them as a tensor, labels=private.labels")
    check_model(update, model)
    meta = update.meta
    # the update's dataset, else the preset's
    spec = SPECS[meta.dataset] if meta.dataset is not None and meta.dataset in SPECS else chosen.spec
    if meta.mean is None:  # no normalisation (UpdateMeta holds both mean and std, or neither): the dataset's
        if spec is None:
            raise InputError(
                "the update carries no normalisation and the preset has none: describe the update with "
                "dataset= or mean=/std= (SharedUpdate.from_gradients)"
            )
        try:
            meta = dataclasses.replace(meta, mean=spec.mean, std=spec.std)
        except ValueError as err:  # the dataset's normalisation disagrees with the update's input shape
            raise InputError(
                f"the update carries no normalisation and that of {spec.name} (preset {chosen.name}) does "
                f"not fit it: {err}; describe the update with mean=/std="
            ) from None
    if meta.input_shape is None and spec is not None:  # no input shape: the dataset's
        try:
            meta = dataclasses.replace(meta, input_shape=(spec.channels, *spec.image_size))
        except ValueError as err:  # the dataset's channels disagree with the update's normalisation
            raise InputError(
                f"the update records no input shape and that of {spec.name} (preset {chosen.name}) does not fit "
                f"it: {err}; describe the update with input_shape="
            ) from None
    shape = meta.input_shape
    # the update as the labels and the attack read it (filled metadata); the digest stays the client's update's
    described = dataclasses.replace(update, meta=meta)
    device = resolve_device(attack.device)
    k = batch_size if batch_size is not None else update.batch_size
    if shape is not None and k is not None and isinstance(model, ClassifierModel):  # its meta pass is known to work
        check_attack_memory(
            footprint(model, shape),
            shape,
            k,
            meta.local,
            attack,
            device,
            "the update's K (and local steps) need a larger machine",
        )
    plan = plan_labels(mode, described, model, true_labels=known, batch_size=batch_size, aux=aux)
    inversion = get_attack(attack.method)(
        model,
        described,
        plan,
        attack,
        bounds=meta.bounds(),
        image_shape=shape,
        priors=chosen.priors if priors is None else priors,
        device=device,
    )
    result = inversion.run(progress=progress)
    return Reconstruction(
        images=result.images,
        labels=torch.as_tensor(result.labels, dtype=torch.int64),
        loss=result.loss,
        label_mode="given" if known is not None else mode,
        restoration=plan.restoration,
        attack=result,
        update_sha256=update.sha256,
        meta=meta,
    )


def score(reconstruction: Reconstruction, private: PrivateBatch, *, lpips: bool | LPIPSMetric = True) -> dict:
    """Image and label metrics of a reconstruction against the client's private batch.

    Reconstructions are matched one-to-one to the true images (Hungarian, on PSNR), then scored
    (PSNR, SSIM, LPIPS; see :func:`~inversion.evaluation.evaluate_reconstruction`).

    Args:
        reconstruction: from :func:`invert`.
        private: the private batch of the *same* update (checked by digest; one tied to no update is refused).
        lpips: compute LPIPS (True), skip it (False), or use this metric.

    Returns:
        ``evaluate_reconstruction``'s dict (``mean``, ``per_image``, ``permutation``, ...) plus ``labels``
        (LeAcc / LnAcc / IRec of the labels used).
    """
    private.check_link(reconstruction.update_sha256)
    metric = LPIPSMetric(default_data_root()) if lpips is True else (lpips or None)
    scores = evaluate_reconstruction(
        reconstruction.images, private.images, reconstruction.meta.denormalize, lpips=metric
    )
    num_classes = int(max(int(private.labels.max()), int(reconstruction.labels.max()))) + 1
    scores["labels"] = label_metrics(
        counts_from_labels(reconstruction.labels.numpy(), num_classes),
        counts_from_labels(private.labels.numpy(), num_classes),
    )
    return scores
