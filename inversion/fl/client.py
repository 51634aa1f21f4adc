"""The FL client's computation: the FedSGD gradient of its private batch, and the update it shares.

:func:`client_gradients` computes the gradient of the **mean** cross-entropy over the client's
batch with respect to every parameter, in chunks of bounded memory when the batch is large;
:func:`final_layer_client_gradients` computes the final layer's only, without a graph through the
backbone; :func:`client_update` wraps either into the :class:`~inversion.fl.update.SharedUpdate`
the server receives, which carries no private data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion.fl.dp import DPSGD, dp_client_tensors
from inversion.fl.local import LocalTraining, local_training_delta
from inversion.fl.update import BN_MODES, SharedUpdate, UpdateMeta
from inversion.models import final_layer
from inversion.utils.errors import InputError

__all__ = ["BN_MODES", "PARAMETER_SETS", "client_gradients", "client_update", "final_layer_client_gradients"]

PARAMETER_SETS = ("all", "final_layer")


def _bn_buffers(model: nn.Module) -> dict[str, Tensor]:
    """Copies of the running statistics of every batch-norm layer (train mode updates them)."""
    saved = {}
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for name, buf in module.named_buffers(recurse=False):
                saved[f"{prefix}.{name}" if prefix else name] = buf.detach().clone()
    return saved


@contextmanager
def _client_mode(model: nn.Module, bn_mode: str):
    """Put the model in the client's mode; afterwards restore its mode and batch-norm statistics."""
    was_training = model.training
    saved_stats = _bn_buffers(model) if bn_mode == "train" else {}
    model.train(bn_mode == "train")
    try:
        yield
    finally:
        model.train(was_training)
        if saved_stats:
            model.load_state_dict(saved_stats, strict=False)


def _chunks(
    model: nn.Module, images: Tensor, labels: Tensor, bn_mode: str, chunk_size: int | None
) -> tuple[int, range]:
    """Validate a client batch for ``model``; return (K, the start index of every chunk)."""
    if bn_mode not in BN_MODES:
        raise InputError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    if images.ndim < 2 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise InputError(
            f"images (K, ...) and labels (K,) must agree; got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    batch_size = labels.shape[0]
    if batch_size < 1:
        raise InputError("the batch is empty")
    classes = final_layer(model).out_features
    if labels.min() < 0 or labels.max() >= classes:
        raise InputError(
            f"the model has {classes} classes but the batch has label "
            f"{int(labels.max() if labels.max() >= classes else labels.min())}: labels must be 0..{classes - 1}"
        )
    chunk = batch_size if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    if bn_mode == "train" and chunk < batch_size:
        raise InputError(
            "train-mode batch norm uses the statistics of the whole batch, so a chunked gradient would differ; "
            "use bn_mode=eval, or chunk_size >= the batch size"
        )
    return batch_size, range(0, batch_size, chunk)


def _progress(starts: range, progress: bool, what: str):
    return tqdm(starts, desc=what, unit="chunk", disable=not progress or len(starts) < 2)


def client_gradients(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    bn_mode: str = "eval",
    chunk_size: int | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Gradient of the mean cross-entropy over the batch w.r.t. every trainable parameter.

    Large batches are processed in chunks of ``chunk_size`` images and accumulated
    (each chunk's summed loss scaled by 1/K), so memory is bounded by one chunk.
    In eval mode this equals the full-batch gradient up to float rounding. Train-mode
    batch norm normalises with the statistics of the whole batch, so chunking would
    change the result: it is refused there. The model's parameters, ``.grad`` fields,
    mode and batch-norm running statistics are left as they were.

    Args:
        model: the shared model.
        images: the client's batch, shape (K, C, H, W), normalised.
        labels: class indices, shape (K,), int64.
        bn_mode: ``"eval"`` (running statistics) or ``"train"`` (batch statistics).
        chunk_size: images per forward/backward pass; None for the whole batch.
        progress: show a progress bar over chunks.

    Returns:
        parameter name -> gradient (same shape and device as the parameter).
    """
    batch_size, starts = _chunks(model, images, labels, bn_mode, chunk_size)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    device = params[0].device
    sums = [torch.zeros_like(p) for p in params]
    step = starts.step
    with _client_mode(model, bn_mode):
        for start in _progress(starts, progress, "client gradient"):
            x = images[start : start + step].to(device)
            y = labels[start : start + step].to(device)
            loss = F.cross_entropy(model(x), y, reduction="sum") / batch_size
            for total, grad in zip(sums, torch.autograd.grad(loss, params)):
                total.add_(grad)
    return {name: total for (name, _), total in zip(named, sums)}


def final_layer_client_gradients(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    bn_mode: str = "eval",
    chunk_size: int | None = None,
    progress: bool = False,
) -> dict[str, Tensor]:
    r"""The client's gradients of the final layer only, without building a graph through the backbone.

    For ``z = W e + b`` and the mean cross-entropy over K samples,
    :math:`\nabla_W = \frac{1}{K} (P - Y)^\top E` and :math:`\nabla_b = \frac{1}{K} \sum_k (p_k - y_k)`,
    with E the (K, M) embeddings, P the (K, C) softmax outputs and Y the one-hot labels.
    The embeddings are computed under ``torch.no_grad()`` in chunks, so memory stays
    at one chunk of activations plus the (K, M) embeddings. Equals the final-layer
    entries of :func:`client_gradients` up to float rounding.

    Args:
        model: a model with ``features`` (images to (B, M) embeddings) and ``fc``
            (the final ``nn.Linear``), e.g. any :class:`~inversion.models.ClassifierModel`.
        images, labels, bn_mode, chunk_size, progress: as in :func:`client_gradients`.

    Returns:
        ``{"<fc>.weight": (C, M), "<fc>.bias": (C,)}`` named as in ``model.named_parameters()``
        (no bias entry when the layer has none).
    """
    features, layer = getattr(model, "features", None), getattr(model, "fc", None)
    if not (isinstance(features, nn.Module) and isinstance(layer, nn.Linear)):
        raise InputError("final-layer-only gradients need a model with `features` and a final nn.Linear `fc`")
    batch_size, starts = _chunks(model, images, labels, bn_mode, chunk_size)
    device = layer.weight.device
    step = starts.step
    with torch.no_grad(), _client_mode(model, bn_mode):
        embeddings = torch.cat(
            [
                features(images[start : start + step].to(device))
                for start in _progress(starts, progress, "client embeddings")
            ]
        )
        residual = torch.softmax(layer(embeddings), dim=1)
        residual[torch.arange(batch_size, device=device), labels.to(device)] -= 1.0
        residual /= batch_size
        names = {id(p): n for n, p in model.named_parameters()}
        grads = {names[id(layer.weight)]: residual.T @ embeddings}
        if layer.bias is not None:
            grads[names[id(layer.bias)]] = residual.sum(dim=0)
    return grads


def client_update(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    bn_mode: str = "eval",
    chunk_size: int | None = None,
    parameters: str = "all",
    dataset: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    notes: Mapping[str, Any] | None = None,
    local: LocalTraining | None = None,
    orders: Tensor | None = None,
    dp: DPSGD | None = None,
    dp_seed: int | None = None,
    progress: bool = False,
) -> SharedUpdate:
    """Simulate one FL client: compute the update it shares for a batch (FedSGD, or FedAvg with ``local``).

    The update carries public metadata only (:meth:`UpdateMeta.describe`: the model's spec and state
    digest, the input shape, the normalisation, ``bn_mode``); the batch itself stays with the
    caller (see :class:`~inversion.fl.private.PrivateBatch`).

    Args:
        model: the shared model.
        images: the private batch, (K, C, H, W), normalised.
        labels: its labels, (K,).
        bn_mode, chunk_size, progress: as in :func:`client_gradients`.
        parameters: ``"all"`` (the FedSGD update) or ``"final_layer"`` (only the final layer's
            gradients, computed without a graph through the backbone: all that label restoration
            needs, and much cheaper for large batches).
        dataset, mean, std: the task's dataset name and normalisation (public).
        notes: further public facts to record (e.g. ``{"parameters": "final_layer"}`` is added).
        local: FedAvg: the client trains S local SGD steps (:mod:`inversion.fl.local`) and shares the
            weight delta (kind ``fedavg``, the schedule in ``meta.local``); needs ``parameters="all"``
            and no ``chunk_size``. None: FedSGD, the gradient.
        orders: FedAvg: (⌈E⌉, K) each local epoch's order of the batch (:meth:`LocalTraining.orders`: the client's
            private draw when the schedule shuffles, required then; the identity by default otherwise).
        dp: DP-SGD through Opacus (:mod:`inversion.fl.dp`) for either kind; σ, C, δ and ε are recorded
            in ``meta.notes["dp"]``. dp_seed: seeds its noise (private: not recorded in the update); None: a
            fresh high-entropy seed (:func:`~inversion.fl.dp.noise_seed`; pass one drawn by it to record it).

    Returns:
        the :class:`SharedUpdate` the server receives.
    """
    if parameters not in PARAMETER_SETS:
        raise InputError(f"parameters must be one of {PARAMETER_SETS}, got {parameters!r}")
    notes = {**dict(notes or {}), "parameters": parameters}
    if local is None and dp is None:
        gradients_of = final_layer_client_gradients if parameters == "final_layer" else client_gradients
        tensors = gradients_of(model, images, labels, bn_mode=bn_mode, chunk_size=chunk_size, progress=progress)
    else:
        if parameters != "all" or chunk_size is not None:
            raise InputError(
                "a FedAvg or DP-SGD client trains the whole model on its whole batch: use "
                "parameters='all' and no chunk_size"
            )
        _chunks(model, images, labels, bn_mode, None)
        with _client_mode(model, bn_mode):
            if dp is None:
                assert local is not None  # local=None with dp=None is the FedSGD branch above
                tensors = local_training_delta(model, images, labels, local, orders)
            else:
                tensors = dp_client_tensors(model, images, labels, dp, local=local, orders=orders, seed=dp_seed)
                notes["dp"] = dp.record(int(labels.shape[0]), local)
    meta = UpdateMeta.describe(
        model,
        dataset=dataset,
        input_shape=tuple(images.shape[1:]),
        mean=mean,
        std=std,
        bn_mode=bn_mode,
        local=local,
        notes=notes,
    )
    return SharedUpdate(
        {n: t.detach().cpu() for n, t in tensors.items()},
        int(labels.shape[0]),
        meta,
        "fedsgd" if local is None else "fedavg",
    )
