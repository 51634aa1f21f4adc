"""The FL client and what it shares: the FedSGD update of an honest-but-curious threat model.

The server knows the model and receives the client's *FedSGD update*: the gradient
of the **mean** cross-entropy over the client's batch with respect to every
parameter. :func:`client_gradients` computes it, in chunks of bounded memory when
the batch is large, and :class:`SharedUpdate` holds it together with the batch size
and a record of how it was made. The client's true batch is kept apart in
:attr:`SharedUpdate.truth`, for evaluation only: attacks must not read it.
"""
from __future__ import annotations

import json
import math
import pickle
import warnings
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data.fileio import atomic_write
from .models import final_layer

__all__ = [
    "PrivateBatch", "SharedUpdate", "PARAMETER_SETS", "client_gradients", "final_layer_client_gradients",
    "compute_shared_update",
]

FORMAT = "gradleak.SharedUpdate"
VERSION = 1
BN_MODES = ("eval", "train")
PARAMETER_SETS = ("all", "final_layer")


@dataclass
class PrivateBatch:
    """The client's private data, kept for evaluation only.

    Attributes:
        images: normalised inputs, shape (K, C, H, W).
        labels: class indices, shape (K,), int64.
    """

    images: Tensor
    labels: Tensor


@dataclass
class SharedUpdate:
    """What the server receives from one client, plus an evaluation-only record of the truth.

    Attributes:
        gradients: parameter name -> gradient of the mean cross-entropy, shapes as the parameters.
        batch_size: K, the number of samples the client averaged over.
        meta: JSON-serialisable record of how the update was made (model, data, client settings).
        truth: the client's true batch (for evaluation only), or None.
    """

    gradients: dict[str, Tensor]
    batch_size: int
    meta: dict[str, Any] = field(default_factory=dict)
    truth: PrivateBatch | None = None

    def __post_init__(self) -> None:
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.gradients:
            raise ValueError("a shared update needs at least one gradient")
        for name, grad in self.gradients.items():
            if not isinstance(grad, Tensor):
                raise ValueError(f"gradient {name!r} is a {type(grad).__name__}, expected a torch.Tensor")
            if not torch.isfinite(grad).all():
                raise ValueError(f"gradient {name!r} holds non-finite values (NaN or inf)")
        if self.truth is not None and self.truth.labels.shape != (self.batch_size,):
            raise ValueError(
                f"truth labels have shape {tuple(self.truth.labels.shape)}, expected ({self.batch_size},)"
            )
        try:
            json.dumps(self.meta)
        except TypeError as err:
            raise ValueError(f"meta must be JSON-serialisable: {err}") from None

    @classmethod
    def from_gradients(
        cls,
        gradients: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
        batch_size: int,
        meta: Mapping[str, Any] | None = None,
    ) -> SharedUpdate:
        """Wrap gradients captured elsewhere (e.g. from your own FL framework).

        Args:
            gradients: name -> gradient, named as in ``model.named_parameters()``,
                each the gradient of the *mean* cross-entropy over the batch.
            batch_size: the number of samples K the client averaged over.
            meta: optional JSON-serialisable notes to keep with the update.
        """
        items = gradients.items() if isinstance(gradients, Mapping) else gradients
        grads = {str(name): torch.as_tensor(g).detach().clone() for name, g in items}
        return cls(grads, int(batch_size), dict(meta or {}))

    def check_compatible(self, model: nn.Module, *, require_all: bool = True) -> None:
        """Raise ValueError unless names and shapes match ``model.named_parameters()``.

        Args:
            model: the model the update is meant for.
            require_all: also require a gradient for every parameter (False for
                partial updates, e.g. the final layer only).
        """
        params = dict(model.named_parameters())
        missing = [n for n in params if n not in self.gradients]
        extra = [n for n in self.gradients if n not in params]
        if extra:
            raise ValueError(f"the update has gradients for parameters the model lacks: {extra[:5]}")
        if missing and require_all:
            raise ValueError(f"the update lacks gradients for model parameters: {missing[:5]}")
        for name, grad in self.gradients.items():
            if grad.shape != params[name].shape:
                raise ValueError(
                    f"gradient {name!r} has shape {tuple(grad.shape)}, the model's parameter {tuple(params[name].shape)}"
                )

    def final_layer_gradients(self, model: nn.Module) -> tuple[Tensor, Tensor | None]:
        """Gradients of the model's final linear layer.

        Returns:
            (grad_weight (C, M), grad_bias (C,) or None when the layer has no bias).
        """
        layer = final_layer(model)
        names = {id(p): n for n, p in model.named_parameters()}
        grad_w = self.gradients[names[id(layer.weight)]]
        grad_b = self.gradients[names[id(layer.bias)]] if layer.bias is not None else None
        return grad_w, grad_b

    def summary(self) -> str:
        """A few human-readable lines: sizes and norms of what the server received."""
        total = sum(g.numel() for g in self.gradients.values())
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in self.gradients.values()))
        lines = [
            f"shared update: K={self.batch_size}, {len(self.gradients)} tensors, "
            f"{total:,} values, global L2 norm {norm:.4g}",
        ]
        width = max(len(n) for n in self.gradients)
        for name, grad in self.gradients.items():
            lines.append(f"  {name:<{width}}  {str(tuple(grad.shape)):<20} norm {float(grad.norm()):.4g}")
        if self.truth is not None:
            counts = torch.bincount(self.truth.labels)
            present = {int(c): int(n) for c, n in enumerate(counts) if n > 0}
            lines.append(f"true label counts (evaluation only, never given to the attack): {present}")
        return "\n".join(lines)

    def save(self, path: str | Path) -> Path:
        """Save atomically (temp file + rename) in a format :meth:`load` reads without unpickling code."""
        path = Path(path)
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "batch_size": int(self.batch_size),
            "gradients": {n: g.detach().cpu().contiguous() for n, g in self.gradients.items()},
            "meta_json": json.dumps(self.meta, sort_keys=True),
            "truth_images": None if self.truth is None else self.truth.images.detach().cpu(),
            "truth_labels": None if self.truth is None else self.truth.labels.detach().cpu(),
        }
        with atomic_write(path) as handle:
            torch.save(payload, handle)
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> SharedUpdate:
        """Load a saved update with ``torch.load(weights_only=True)``: tensors and plain data only.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file holds arbitrary pickled objects (refused, for
                security), or is not a shared-update file of a known version.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no shared-update file at {path}")
        try:
            with warnings.catch_warnings():  # torch warns about legacy pickle protocols before refusing them
                warnings.simplefilter("ignore", UserWarning)
                payload = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(
                f"{path} holds objects other than tensors and plain data; it is refused because unpickling "
                f"arbitrary objects can run code. Save updates with SharedUpdate.save. ({str(err).splitlines()[0]})"
            ) from None
        except (RuntimeError, EOFError, OSError) as err:
            raise ValueError(f"{path} is not a readable torch file (truncated or corrupt?): {err}") from None
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file")
        if payload.get("version") != VERSION:
            raise ValueError(f"{path} has format version {payload.get('version')}; this code reads version {VERSION}")
        truth = None
        if payload["truth_labels"] is not None:
            truth = PrivateBatch(payload["truth_images"], payload["truth_labels"])
        return cls(payload["gradients"], payload["batch_size"], json.loads(payload["meta_json"]), truth)


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


def _chunks(images: Tensor, labels: Tensor, bn_mode: str, chunk_size: int | None) -> tuple[int, range]:
    """Validate a client batch; return (K, the start index of every chunk)."""
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    if images.ndim < 2 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images (K, ...) and labels (K,) must agree; got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    batch_size = labels.shape[0]
    if batch_size < 1:
        raise ValueError("the batch is empty")
    chunk = batch_size if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if bn_mode == "train" and chunk < batch_size:
        raise ValueError(
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
    batch_size, starts = _chunks(images, labels, bn_mode, chunk_size)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    device = params[0].device
    sums = [torch.zeros_like(p) for p in params]
    step = starts.step
    with _client_mode(model, bn_mode):
        for start in _progress(starts, progress, "client gradient"):
            x = images[start:start + step].to(device)
            y = labels[start:start + step].to(device)
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
    if not (isinstance(getattr(model, "features", None), nn.Module) and isinstance(getattr(model, "fc", None), nn.Linear)):
        raise ValueError("final-layer-only gradients need a model with `features` and a final nn.Linear `fc`")
    batch_size, starts = _chunks(images, labels, bn_mode, chunk_size)
    layer = model.fc
    device = layer.weight.device
    step = starts.step
    with torch.no_grad(), _client_mode(model, bn_mode):
        embeddings = torch.cat([
            model.features(images[start:start + step].to(device))
            for start in _progress(starts, progress, "client embeddings")
        ])
        residual = torch.softmax(layer(embeddings), dim=1)
        residual[torch.arange(batch_size, device=device), labels.to(device)] -= 1.0
        residual /= batch_size
        names = {id(p): n for n, p in model.named_parameters()}
        grads = {names[id(layer.weight)]: residual.T @ embeddings}
        if layer.bias is not None:
            grads[names[id(layer.bias)]] = residual.sum(dim=0)
    return grads


def compute_shared_update(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    bn_mode: str = "eval",
    chunk_size: int | None = None,
    parameters: str = "all",
    meta: Mapping[str, Any] | None = None,
    keep_truth: bool = True,
    progress: bool = False,
) -> SharedUpdate:
    """Simulate one FL client: compute its FedSGD update on a batch.

    Args:
        model: the shared model.
        images: the private batch, shape (K, C, H, W), normalised.
        labels: its labels, shape (K,).
        bn_mode, chunk_size, progress: as in :func:`client_gradients`.
        parameters: ``"all"`` (the FedSGD update) or ``"final_layer"`` (only the final
            layer's gradients, computed without a graph through the backbone: all that
            label restoration needs, and much cheaper for large batches).
        meta: JSON-serialisable record to store (config, data source, ...);
            ``bn_mode``, ``chunk_size`` and ``parameters`` are added.
        keep_truth: keep the true batch in :attr:`SharedUpdate.truth` (evaluation only).

    Returns:
        the :class:`SharedUpdate` the server receives.
    """
    if parameters not in PARAMETER_SETS:
        raise ValueError(f"parameters must be one of {PARAMETER_SETS}, got {parameters!r}")
    gradients_of = final_layer_client_gradients if parameters == "final_layer" else client_gradients
    grads = gradients_of(model, images, labels, bn_mode=bn_mode, chunk_size=chunk_size, progress=progress)
    record = {**dict(meta or {}), "bn_mode": bn_mode, "chunk_size": chunk_size, "parameters": parameters}
    truth = PrivateBatch(images.detach().cpu().clone(), labels.detach().cpu().clone()) if keep_truth else None
    return SharedUpdate({n: g.detach().cpu() for n, g in grads.items()}, int(labels.shape[0]), record, truth)
