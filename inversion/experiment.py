"""From a config to the objects of a run: image source, model, client batch, shared update."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from .client import SharedUpdate, compute_shared_update
from .config import to_dict
from .data import Batch, ImageSource, load_source, sample_batch
from .models import ClassifierModel, build_model, load_weights

__all__ = ["ClientRun", "source_from_config", "model_from_config", "batch_from_config", "simulate_client"]


def _tuple(values):
    return None if values is None else tuple(values)


def source_from_config(data: DictConfig) -> ImageSource:
    """The image source described by a ``data`` config group."""
    d = to_dict(data)
    return load_source(
        d["name"], root=d["root"], split=d["split"], download=d["download"], folder=d["folder"],
        image_size=_tuple(d["image_size"]), channels=d["channels"], mean=_tuple(d["mean"]), std=_tuple(d["std"]),
    )


def model_from_config(model: DictConfig, source: ImageSource) -> ClassifierModel:
    """The shared model of a ``model`` config group, shaped for the source's images."""
    m = to_dict(model)
    spec = source.spec
    net = build_model(
        m["name"], num_classes=m["num_classes"] or spec.num_classes, in_channels=spec.channels,
        image_size=spec.image_size, activation=m["activation"], seed=m["seed"],
        width=m["width"], depth=m["depth"], final_bias=m["final_bias"], dropout=m["dropout"],
    )
    if m["weights"]:
        load_weights(net, m["weights"])
    return net


def batch_from_config(client: DictConfig, source: ImageSource) -> Batch:
    """The client's private batch as a ``client`` config group describes it."""
    c = to_dict(client)
    return sample_batch(
        source, c["batch_size"], c["sampler"], seed=c["seed"], counts=c["counts"], classes=c["classes"],
        target_class=c["target_class"], replacement=c["replacement"],
    )


@dataclass
class ClientRun:
    """Everything one simulated client produced: what it shares and what stays private."""

    update: SharedUpdate
    model: ClassifierModel
    source: ImageSource
    batch: Batch


def simulate_client(cfg: DictConfig, *, progress: bool = True) -> ClientRun:
    """Run the client of a config with ``data``, ``model`` and ``client`` groups.

    The update's meta records the full config, the data source, the model's build
    arguments and whether images were sampled with replacement; the true batch is
    kept apart in ``update.truth``.
    """
    source = source_from_config(cfg.data)
    model = model_from_config(cfg.model, source)
    batch = batch_from_config(cfg.client, source)
    client = to_dict(cfg.client)
    meta = {
        "config": to_dict(cfg),
        "data_source": batch.source,
        "replacement": batch.replacement,
        "model": model.config,
    }
    update = compute_shared_update(
        model, batch.images, batch.labels, bn_mode=client["bn_mode"],
        chunk_size=client["chunk_size"], meta=meta, progress=progress,
    )
    return ClientRun(update, model, source, batch)
