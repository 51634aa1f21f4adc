"""From a config to the objects of a run: image source, model, client batch, shared update."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from .client import SharedUpdate, compute_shared_update
from .config import to_dict
from .data import Batch, ImageSource, load_source, sample_batch, sample_synthetic_batch
from .models import ClassifierModel, build_model, final_layer, load_weights

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
        net.config["weights"] = m["weights"]
    return net


def batch_from_config(client: DictConfig, source: ImageSource, model: ClassifierModel) -> Batch:
    """The client's private batch as a ``client`` config group describes it.

    With ``synthetic_labels`` the labels are drawn over the model's classes independently
    of the images, which is refused for a model with trained weights (its gradients
    depend on whether images and labels match).
    """
    c = to_dict(client)
    options = {"seed": c["seed"], "counts": c["counts"], "classes": c["classes"], "target_class": c["target_class"]}
    if not c["synthetic_labels"]:
        return sample_batch(source, c["batch_size"], c["sampler"], replacement=c["replacement"], **options)
    if model.config.get("weights"):
        raise ValueError(
            "client.synthetic_labels is only valid for untrained models: a trained model's gradients depend on "
            "whether each label matches its image. Use real labels, or drop model.weights"
        )
    if c["replacement"]:
        raise ValueError("client.synthetic_labels draws distinct images; client.replacement=true is not allowed with it")
    return sample_synthetic_batch(source, c["batch_size"], final_layer(model).out_features, c["sampler"], **options)


@dataclass
class ClientRun:
    """Everything one simulated client produced: what it shares and what stays private."""

    update: SharedUpdate
    model: ClassifierModel
    source: ImageSource
    batch: Batch


def simulate_client(cfg: DictConfig, *, progress: bool = True, source: ImageSource | None = None) -> ClientRun:
    """Run the client of a config with ``data``, ``model`` and ``client`` groups.

    The update's meta records the full config, the data source, the model's build
    arguments and whether images were sampled with replacement; the true batch is
    kept apart in ``update.truth``. Pass ``source`` to reuse an image source already
    loaded from ``cfg.data`` (e.g. across the trials of a benchmark).
    """
    source = source if source is not None else source_from_config(cfg.data)
    model = model_from_config(cfg.model, source)
    batch = batch_from_config(cfg.client, source, model)
    client = to_dict(cfg.client)
    meta = {
        "config": to_dict(cfg),
        "data_source": batch.source,
        "replacement": batch.replacement,
        "labels": "synthetic" if batch.synthetic_labels else "real",
        "model": model.config,
    }
    update = compute_shared_update(
        model, batch.images, batch.labels, bn_mode=client["bn_mode"], chunk_size=client["chunk_size"],
        parameters=client["parameters"], meta=meta, progress=progress,
    )
    return ClientRun(update, model, source, batch)
