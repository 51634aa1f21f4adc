"""From a resolved config (its typed ``data``, ``model`` and ``client`` sections) to the objects of a simulated
client: image source, model, private batch, shared update."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from inversion.attack.settings import AttackSettings
from inversion.config import AuxConfig, ClientConfig, ConfigError, DataConfig, ModelConfig
from inversion.data import (
    Batch,
    ImageSource,
    SubsetSource,
    default_data_root,
    load_source,
    sample_batch,
    sample_synthetic_batch,
)
from inversion.fl.client import client_update
from inversion.fl.dp import noise_seed
from inversion.fl.local import LocalTraining
from inversion.fl.private import PrivateBatch
from inversion.fl.update import SharedUpdate
from inversion.models import ClassifierModel, build_model, final_layer, footprint, load_weights
from inversion.models.training_record import load_training_record
from inversion.restore.auxiliary import AuxiliaryData, draw_auxiliary
from inversion.utils.memory import attack_memory, check_memory, client_memory
from inversion.utils.records import as_record

LOCAL_ORDER_SEED = 7919
"""Offset of a shuffling FedAvg client's order generator from its ``client.seed`` (a stream of its own)."""

__all__ = [
    "ClientRun",
    "ClientSetup",
    "auxiliary_from_config",
    "batch_from_config",
    "build_from_model_config",
    "check_attack_memory",
    "check_client_memory",
    "client_auxiliary",
    "model_from_config",
    "simulate_client",
    "source_from_config",
]


def _tuple(values):
    return None if values is None else tuple(values)


class ClientSetup(Protocol):
    """A resolved config with the sections a simulated client reads (e.g. ``ShareConfig``, ``InvertConfig``)."""

    data: DataConfig
    model: ModelConfig
    client: ClientConfig


def source_from_config(data: DataConfig) -> ImageSource:
    """The image source described by a ``data`` config group."""
    return load_source(
        str(data.name),
        root=data.root,
        split=str(data.split),
        download=data.download,
        folder=data.folder,
        image_size=_tuple(data.image_size),
        channels=data.channels,
        mean=_tuple(data.mean),
        std=_tuple(data.std),
    )


def build_from_model_config(model: ModelConfig, input_shape: Sequence[int], num_classes: int) -> ClassifierModel:
    """The model a ``model`` config group describes, for inputs of ``input_shape`` (C, H, W).

    ``num_classes`` applies when the group leaves ``num_classes`` unset; ``weights`` are loaded
    (tensors only) and recorded in ``model.config["weights"]``.
    """
    net = build_model(
        str(model.name),
        num_classes=num_classes if model.num_classes is None else model.num_classes,
        in_channels=int(input_shape[0]),
        image_size=tuple(input_shape[1:]),
        activation=None if model.activation is None else str(model.activation),
        seed=model.seed,
        width=model.width,
        depth=model.depth,
        final_bias=model.final_bias,
        dropout=model.dropout,
    )
    if model.weights:
        load_weights(net, model.weights)
        net.config["weights"] = model.weights
    return net


def model_from_config(model: ModelConfig, source: ImageSource) -> ClassifierModel:
    """The shared model of a ``model`` config group, shaped for the source's images."""
    spec = source.spec
    return build_from_model_config(model, (spec.channels, *spec.image_size), spec.num_classes)


def batch_from_config(client: ClientConfig, source: ImageSource, model: ClassifierModel) -> Batch:
    """The client's private batch as a ``client`` config group describes it.

    With ``synthetic_labels`` the labels are drawn over the model's classes independently of the images (a
    config refuses them for a model with trained weights, whose gradients depend on whether images and labels
    match, and with ``replacement``).
    """
    options: dict[str, Any] = {
        "seed": client.seed,
        "counts": client.counts,
        "classes": client.classes,
        "target_class": client.target_class,
    }
    sampler = str(client.sampler)
    if not client.synthetic_labels:
        return sample_batch(source, client.batch_size, sampler, replacement=client.replacement, **options)
    return sample_synthetic_batch(source, client.batch_size, final_layer(model).out_features, sampler, **options)


def client_images(images: str, source: ImageSource, data: DataConfig, weights: str | None) -> ImageSource:
    """The images a client draws its batch from: all of ``source``, or those the model in ``weights``
    (a checkpoint of ``scripts/train.py``) was trained on (``trained``) or held out from (``held_out``).

    ``data`` is the client's ``data`` group; it must name the images the model was trained on (the
    same settings but ``download``).

    Raises:
        ConfigError: ``trained``/``held_out`` without such a checkpoint, or a model trained on other images.
    """
    if images == "all":
        return source
    if weights is None:
        raise ConfigError(
            f"{images} draws from a trained model's split; give model.weights=<a checkpoint of scripts/train.py>",
            "client.images",
        )
    try:
        record = load_training_record(weights)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"client.images={images}: {err}") from None
    ours, theirs = ({k: v for k, v in d.items() if k != "download"} for d in (absolute_data(data), record.data))
    if ours != theirs:
        differ = sorted(k for k in ours if ours[k] != theirs.get(k))
        raise ConfigError(
            f"client.images={images}: {weights} was trained on other images (data.{', data.'.join(differ)} "
            f"differ: {', '.join(f'{theirs.get(k)!r}' for k in differ)}); use the same data settings"
        )
    positions = record.train_indices if images == "trained" else record.held_out_indices
    what = "trained on" if images == "trained" else "held out from"
    return SubsetSource(source, positions, f"the {len(positions):,} images {weights} was {what}")


def check_labels(labels: Tensor, model: ClassifierModel, source: ImageSource, what: str = "the batch") -> None:
    """ConfigError unless every label of ``what`` is one of the model's classes (the cross-entropy needs label < C)."""
    num_classes = final_layer(model).out_features
    top = int(labels.max())
    if top >= num_classes:
        raise ConfigError(
            f"model.num_classes={num_classes} but {what} has label {top}: "
            f"use num_classes >= {top + 1} (the dataset has {source.spec.num_classes} classes)"
        )


def absolute_data(data: DataConfig) -> dict[str, Any]:
    """The ``data`` group as a record (a plain dict) with ``root`` (default: the data root) and ``folder`` made
    absolute, so that it reloads from any directory (a federation's clients, a training record)."""
    record = as_record(data)
    record["root"] = str(Path(record["root"] or default_data_root()).expanduser().resolve())
    if record["folder"] is not None:
        record["folder"] = str(Path(record["folder"]).expanduser().resolve())
    return record


@dataclass
class ClientRun:
    """Everything one simulated client produced: what it shares, and what stays private.

    Attributes:
        update: the :class:`SharedUpdate` the server receives (public).
        private: the client's :class:`PrivateBatch` (images, labels, how they were drawn), for scoring only.
        model: the shared model.
        source: the image source the batch was drawn from.
        batch: the sampled batch (images, labels, indices).
    """

    update: SharedUpdate
    private: PrivateBatch
    model: ClassifierModel
    source: ImageSource
    batch: Batch


def check_client_memory(sizes: tuple[int, int], input_shape: Sequence[int], client: ClientConfig) -> None:
    """ValueError, unless ``client.memory_check`` is off, when the client would need more memory than the CPU has
    free (:func:`~inversion.utils.memory.client_memory`); ``sizes``: the model's :func:`~inversion.models.footprint`."""
    if client.memory_check:
        estimate = client_memory(
            *sizes,
            input_shape,
            client.batch_size,
            chunk_size=client.chunk_size,
            local=client.local_training(),
            dp=client.dp_noise_multiplier is not None,
            backward=client.parameters == "all",
        )
        check_memory(estimate, "cpu", "client.memory_check", "use a smaller client.batch_size or client.chunk_size")


def check_attack_memory(
    sizes: tuple[int, int],
    input_shape: Sequence[int],
    batch_size: int,
    local: LocalTraining | None,
    settings: AttackSettings,
    device: torch.device | str,
    advice: str,
) -> None:
    """ValueError, unless ``settings.memory_check`` is off, when the attack on an update of ``batch_size`` inputs
    (through FedAvg's ``local`` steps, if any) would need more memory than ``device`` has free
    (:func:`~inversion.utils.memory.attack_memory`); ``sizes``: the model's :func:`~inversion.models.footprint`;
    ``advice``: what to make smaller, for the message."""
    if settings.memory_check:
        check_memory(attack_memory(*sizes, input_shape, batch_size, local=local), device, "attack.memory_check", advice)


def simulate_client(
    cfg: ClientSetup,
    *,
    progress: bool = True,
    source: ImageSource | None = None,
    attack: AttackSettings | None = None,
    attack_device: torch.device | str = "cpu",
) -> ClientRun:
    """Run the client of a resolved config with ``data``, ``model`` and ``client`` sections.

    The update carries public metadata only (model spec and state digest, input shape,
    normalisation, batch-norm mode, and the trained-weights file if any). Everything private
    (the batch, the full config with its seeds, the data source, the sampled indices) goes
    into the :class:`PrivateBatch`, tied to the update by its digest; so does the seed of the DP-SGD
    noise (record ``dp_noise_seed``: ``client.dp_noise_seed``, or fresh OS entropy when that is null).
    Pass ``source`` to reuse an image source already loaded from ``cfg.data`` (e.g. across the trials
    of a benchmark). Before the batch is drawn, the client's memory is estimated, and with ``attack`` that of
    the attack that is to run next on ``attack_device`` (:mod:`inversion.utils.memory`).

    Raises:
        ConfigError: ``model.num_classes`` is not positive, or smaller than a label of the batch.
        ValueError: the client or the attack would need more memory than is free (``client.memory_check``,
            ``attack.memory_check``).
    """
    source = source if source is not None else source_from_config(cfg.data)
    model = model_from_config(cfg.model, source)
    source = client_images(str(cfg.client.images), source, cfg.data, cfg.model.weights)
    client = cfg.client
    spec = source.spec
    shape = (spec.channels, *spec.image_size)
    if client.memory_check or (attack is not None and attack.memory_check):
        sizes = footprint(model, shape)
        check_client_memory(sizes, shape, client)
        if attack is not None:
            check_attack_memory(
                sizes,
                shape,
                client.batch_size,
                client.local_training(),
                attack,
                attack_device,
                "use a smaller client.batch_size, fewer client.local_steps or a smaller model",
            )
    batch = batch_from_config(client, source, model)
    check_labels(batch.labels, model, source)
    dp = client.dp_sgd()
    dp_seed = None if dp is None else noise_seed(client.dp_noise_seed)
    local = client.local_training()
    orders = None  # a shuffling client's private order of its batch in each local epoch, from its seed
    if local is not None and local.shuffle:
        orders = local.orders(client.batch_size, torch.Generator().manual_seed(client.seed + LOCAL_ORDER_SEED))
    update = client_update(
        model,
        batch.images,
        batch.labels,
        bn_mode=str(client.bn_mode),
        chunk_size=client.chunk_size,
        parameters=str(client.parameters),
        dataset=spec.name,
        mean=spec.mean,
        std=spec.std,
        local=local,
        orders=orders,
        dp=dp,
        dp_seed=dp_seed,
        progress=progress,
    )
    record = {
        "config": as_record(cfg),
        "data_source": batch.source,
        "indices": [int(i) for i in source.original_indices(batch.indices)],
        "replacement": batch.replacement,
        "labels": "synthetic" if batch.synthetic_labels else "real",
        **({} if dp_seed is None else {"dp_noise_seed": dp_seed}),
        **({} if orders is None else {"local_orders": orders.tolist()}),
    }
    private = PrivateBatch(
        batch.images.detach().cpu().clone(), batch.labels.detach().cpu().clone(), record, update.sha256
    )
    return ClientRun(update, private, model, source, batch)


def auxiliary_from_config(
    aux: AuxConfig, source: ImageSource, exclude: Sequence[int] = (), synthetic_classes: int | None = None
) -> AuxiliaryData:
    """The server's auxiliary set of an ``aux`` config group: ``aux.size`` images of ``source`` (seed ``aux.seed``),
    none at the positions ``exclude`` (the client's batch); labels drawn over ``synthetic_classes`` classes
    when the client's are synthetic.

    Raises:
        ConfigError: nothing is left to draw from.
    """
    try:
        return draw_auxiliary(source, aux.size, aux.seed, exclude, synthetic_classes)
    except ValueError as err:
        raise ConfigError(f"aux: {err}") from None


def client_auxiliary(aux: AuxConfig, client: ClientRun) -> AuxiliaryData:
    """The server's auxiliary set for a simulated client: from the images it draws from, without its batch,
    with synthetic labels over the model's classes if the client's labels are synthetic."""
    synthetic = final_layer(client.model).out_features if client.batch.synthetic_labels else None
    return auxiliary_from_config(aux, client.source, client.batch.indices.tolist(), synthetic)
