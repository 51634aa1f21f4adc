"""The FedSGD client app: draws a batch from its partition, computes its (DP-SGD) gradient, replies w - η g."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from inversion.data import load_source
from inversion.fl.client import client_update
from inversion.fl.flower.capture import (
    BN_MODE_KEY,
    LR_KEY,
    NUM_EXAMPLES_KEY,
    PARTITION_KEY,
    Reply,
    captured_update,
    plain_record,
)
from inversion.fl.flower.protocol import (
    ClientSettings,
    dp_noise_seed,
    draw_batch,
    fedsgd_protocol,
    partition_indices,
    sgd_step,
    single_record,
    update_path,
)
from inversion.fl.private import PrivateBatch
from inversion.utils.errors import InputError


@lru_cache(maxsize=2)
def _source(data_items: tuple[tuple[str, Any], ...]):
    """The image source, loaded once per (Ray actor) process."""
    data = dict(data_items)
    for key in ("image_size", "mean", "std"):
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    return load_source(data.pop("name"), **data)


def _hashable(data: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in data.items()))


def fedsgd_train(message: Message, context: Context, settings: ClientSettings) -> Message:
    """One FedSGD client step (the body of :func:`fedsgd_client_app`'s ``train`` handler).

    Reads w, η, the round and the batch-norm mode from the message; draws the client's batch from its
    partition (``partition-id`` / ``num-partitions`` of the node config); replies w' = w - η g with
    ``{num-examples: K, partition-id: p}``, g privatized by DP-SGD when ``settings.dp`` is set. When
    ``settings.private_dir`` is set, also writes the batch as a :class:`PrivateBatch` tied to the update
    the server will capture (with the DP noise's seed, ``dp_noise_seed``, under DP-SGD).

    The private link: the server's capture (:func:`captured_update` on w, w' and public facts) is a
    deterministic function of data the client holds bit for bit (Flower's ArrayRecord carries the
    ``.npy`` bytes losslessly), so the client computes the same update and writes its sha256. There is
    no float-rounding gap to bridge, and no private data ever passes through the server's code.
    :func:`~inversion.federate.run_federation` re-checks every link after the run.
    """
    content = message.content
    config = single_record(content.config_records, "ConfigRecord")
    server_round = int(config["server-round"])
    lr = float(config[LR_KEY])
    bn_mode = str(config[BN_MODE_KEY])
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    task = settings.task

    model = task.build(single_record(content.array_records, "ArrayRecord").to_torch_state_dict())
    source = _source(_hashable(settings.data))
    if len(source) != settings.num_items:
        raise InputError(
            f"the client's data source has {len(source)} images, the federation was set up for "
            f"{settings.num_items} ({source.description})"
        )
    partition = partition_indices(len(source), num_partitions, settings.partition_seed)[partition_id]
    indices = draw_batch(source.targets, partition, settings, source.spec.num_classes, server_round, partition_id)
    images = source.spec.normalize(source.images(indices))
    labels = torch.as_tensor(source.targets[indices], dtype=torch.int64)

    seed = None if settings.dp is None else dp_noise_seed(settings, server_round, partition_id)
    gradients = client_update(
        model, images, labels, bn_mode=bn_mode, chunk_size=settings.chunk_size, dp=settings.dp, dp_seed=seed
    ).gradients  # the simulated client's computation
    after = sgd_step(model, gradients, lr)
    metrics = {NUM_EXAMPLES_KEY: len(labels), PARTITION_KEY: partition_id}
    if settings.private_dir is not None:
        reply = Reply(server_round, int(context.node_id), plain_record(config), metrics)
        expected = captured_update(
            model, after, fedsgd_protocol(lr, bn_mode), reply, check_sign=False, **task.inputs()
        )  # what the server will capture (it checks the sign)
        record = {
            **settings.record,
            "protocol": "fedsgd",
            "round": server_round,
            "partition_id": partition_id,
            "node_id": int(context.node_id),
            "num_partitions": num_partitions,
            "partition_seed": settings.partition_seed,
            "partition_size": len(partition),
            "batch_seed": [int(settings.seed), server_round, partition_id],
            "sampler": settings.sampler,
            "replacement": settings.replacement,
            "indices": [int(i) for i in indices],
            "data_source": source.description,
            "labels": "real",
            **({} if seed is None else {"dp_noise_seed": seed}),
        }
        PrivateBatch(images, labels, record, expected.sha256).save(
            update_path(settings.private_dir, server_round, partition_id)
        )
    reply = RecordDict(
        {
            "arrays": ArrayRecord.from_torch_state_dict(after),
            "metrics": MetricRecord(metrics),
        }
    )
    return Message(reply, reply_to=message)


def fedsgd_client_app(settings: ClientSettings) -> ClientApp:
    """A Flower :class:`ClientApp` whose ``train`` handler is one FedSGD step (:func:`fedsgd_train`)."""
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return fedsgd_train(message, context, settings)

    return app
