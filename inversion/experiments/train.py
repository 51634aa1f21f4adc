"""Train a zoo model on real images: checkpoints at chosen epochs, a log of train and held-out accuracy, resume.

:func:`run_training` takes a resolved :class:`~inversion.config.TrainConfig` (``data`` and ``model`` groups, a
``train`` section and ``out``). A split seeded by ``train.seed`` keeps a fraction ``train.held_out`` of the
source's images (of at most ``train.max_images``, a seeded sample) out of training; the model, initialised from
``model.seed``, trains on the rest with mini-batch SGD or Adam on the CPU, reshuffled in every epoch by a
generator seeded with ``[train.seed, epoch]`` (which also seeds torch's RNG for that epoch, e.g. for dropout).
Written into ``out``, each file atomically and holding tensors and plain data only::

    epoch_EEE.pt     the state_dict after EEE epochs (000: the untrained model), for the chosen epochs;
                     ``inversion.models.load_weights`` (weights_only) loads it
    train_log.json   the resolved config, the data source, per epoch train loss/accuracy, held-out
                     loss/accuracy and seconds, the checkpoint files with their sha256, and the split
                     (the image indices trained on and held out, with their sha256); after every epoch
    resume.pt        model and optimizer state after the last finished epoch (``resume=True`` continues)
    config.yaml      the resolved config

A resumed run gives bit-identical checkpoints to an uninterrupted one (same number of threads): every
epoch's randomness comes from its own seed, and ``resume.pt`` restores the model and optimizer exactly.
:func:`load_training_record` reads the log back, so later code can draw client batches from the images a
model was trained on, or from held-out ones.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from inversion.config import ConfigError, TrainConfig, TrainSettings
from inversion.data import ImageSource
from inversion.data.batch import check_fits_in_memory
from inversion.fl.simulate import absolute_data, check_labels, model_from_config, source_from_config
from inversion.models import ClassifierModel
from inversion.models.training_record import LOG_FORMAT, LOG_NAME, TrainingRecord, indices_sha256, load_training_record
from inversion.utils.fileio import atomic_write, load_tensor_file, sha256_file
from inversion.utils.records import as_record, record_digest, write_yaml_record
from inversion.utils.rundir import check_out, run_folder

__all__ = [
    "LOG_NAME",
    "RESUME_NAME",
    "Split",
    "TrainingRecord",
    "evaluate",
    "load_training_record",
    "run_training",
    "split_indices",
]

log = logging.getLogger("inversion.experiments.train")

RESUME_NAME = "resume.pt"
RESUME_FORMAT = "gradleak.TrainState"
OUTPUTS = ("config.yaml", LOG_NAME, RESUME_NAME)
"""The fixed names a run writes into ``out``, besides its ``epoch_EEE.pt`` checkpoints."""
EVAL_CHUNK = 1000
"""Images per forward pass when evaluating."""


@dataclass(frozen=True)
class Split:
    """Which images of a source are trained on and which are held out (disjoint, each sorted).

    Attributes:
        train: (N_train,) int64 positions in the source.
        held_out: (N_held,) int64 positions in the source.
    """

    train: np.ndarray
    held_out: np.ndarray


def split_indices(num_images: int, held_out: float, seed: int, max_images: int | None = None) -> Split:
    """A seeded split: of a random sample of ``min(num_images, max_images)`` images, ``round(held_out * n)``
    are held out and the rest trained on."""
    order = np.random.default_rng(seed).permutation(num_images)[:max_images]
    cut = round(held_out * len(order))
    return Split(np.sort(order[cut:]), np.sort(order[:cut]))


def _load_images(source: ImageSource, indices: np.ndarray) -> tuple[Tensor, Tensor]:
    """Normalised images (N, C, H, W) float32 and their labels (N,) int64."""
    return source.spec.normalize(source.images(indices)), torch.as_tensor(source.targets[indices], dtype=torch.int64)


def evaluate(model: nn.Module, images: Tensor, labels: Tensor, chunk: int = EVAL_CHUNK) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode on images (N, C, H, W) with labels (N,).

    Runs in chunks of ``chunk`` images; the model's training mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(labels), chunk):
            logits = model(images[start : start + chunk])
            target = labels[start : start + chunk]
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    model.train(was_training)
    return loss / len(labels), correct / len(labels)


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """The optimizer ``settings`` name, over all of the model's parameters."""
    if settings.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )


def _train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    seed: Sequence[int],
    bar: tqdm,
) -> tuple[float, float]:
    """One epoch over images (N, C, H, W) / labels (N,) in a shuffle seeded by ``seed``; torch's RNG is seeded
    from it for the epoch and restored afterwards. Returns the mean loss and the accuracy of the batches as
    trained on (train mode, before each step)."""
    rng = np.random.default_rng(seed)
    order = torch.from_numpy(rng.permutation(len(labels)))
    steps = len(labels) // batch_size
    loss_sum, correct = 0.0, 0
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**62)))
        for step in range(steps):
            index = order[step * batch_size : (step + 1) * batch_size]
            optimizer.zero_grad(set_to_none=True)
            logits = model(images[index])
            loss = F.cross_entropy(logits, labels[index])
            loss.backward()
            optimizer.step()
            loss_sum += loss.item()
            correct += int((logits.argmax(1) == labels[index]).sum())
            bar.update(1)
    return loss_sum / steps, correct / (steps * batch_size)


def _identity(cfg: TrainConfig, split: Split) -> str:
    """The sha256 of what determines the training trajectory: the config (without ``out``, ``data.root``,
    ``train.epochs`` and ``train.checkpoint_epochs``, so a moved run resumes and a finished one trains on)
    and the split."""
    return record_digest(
        cfg,
        ignore=("out", "data.root", "train.epochs", "train.checkpoint_epochs"),
        split=[indices_sha256(split.train), indices_sha256(split.held_out)],
    )


@dataclass(frozen=True)
class _Finished:
    """The state of a run after its last finished epoch (-1: none yet): what ``resume.pt`` and the log hold."""

    epoch: int = -1
    history: tuple[dict[str, Any], ...] = ()
    checkpoints: tuple[dict[str, Any], ...] = ()


def _save_state(path: Path, identity: str, done: _Finished, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """``resume.pt``: the run's identity, its finished state, and the model's and optimizer's state_dicts."""
    payload = {
        "format": RESUME_FORMAT,
        "version": 1,
        "identity": identity,
        "epoch": done.epoch,
        "history": list(done.history),
        "checkpoints": list(done.checkpoints),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def _load_state(
    out: Path, identity: str, settings: TrainSettings, model: nn.Module, optimizer: torch.optim.Optimizer
) -> _Finished:
    """Restore model and optimizer from ``out/resume.pt``; ConfigError (one line) if it cannot continue this run."""
    path = out / RESUME_NAME
    try:
        payload = load_tensor_file(path, "resume state")
    except ValueError as err:
        raise ConfigError(f"--resume: {err}") from None
    keys = ("identity", "epoch", "history", "checkpoints", "model", "optimizer")
    if (
        not isinstance(payload, dict)
        or payload.get("format") != RESUME_FORMAT
        or payload.get("version") != 1
        or any(key not in payload for key in keys)
    ):
        raise ConfigError(f"--resume: {path} is not a version-1 training state; run without --resume to start over")
    if payload["identity"] != identity:
        raise ConfigError(
            f"--resume: {path} was written by another training run (another config, apart from out, "
            "data.root, train.epochs and train.checkpoint_epochs, or another split)"
        )
    done = _Finished(payload["epoch"], tuple(payload["history"]), tuple(payload["checkpoints"]))
    if done.epoch > settings.epochs:
        raise ConfigError(
            f"--resume: {path} has finished {done.epoch} epochs, more than train.epochs={settings.epochs}"
        )
    saved = {c["epoch"] for c in done.checkpoints}
    missed = [e for e in settings.saved_epochs if e <= done.epoch and e not in saved]
    if missed:
        raise ConfigError(f"--resume: checkpoint epochs {missed} are already past and were not saved")
    for checkpoint in done.checkpoints:
        if not (out / checkpoint["file"]).is_file() or sha256_file(out / checkpoint["file"]) != checkpoint["sha256"]:
            raise ConfigError(f"--resume: {out / checkpoint['file']} is missing or changed since it was saved")
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    return done


def _commit(
    out: Path,
    epoch: int,
    row: dict[str, Any],
    done: _Finished,
    saved_epochs: list[int],
    identity: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
) -> _Finished:
    """Write the checkpoint of ``epoch`` (if chosen), then ``resume.pt``; the new finished state."""
    checkpoints = done.checkpoints
    if epoch in saved_epochs:
        name = f"epoch_{epoch:03d}.pt"
        with atomic_write(out / name) as handle:
            torch.save(model.state_dict(), handle)
        checkpoints = (
            *[c for c in checkpoints if c["epoch"] != epoch],
            {"epoch": epoch, "file": name, "sha256": sha256_file(out / name)},
        )
    finished = _Finished(epoch, (*done.history, row), checkpoints)
    _save_state(out / RESUME_NAME, identity, finished, model, optimizer)
    return finished


def _write_log(path: Path, header: dict[str, Any], done: _Finished, status: str) -> None:
    """``train_log.json``: the header, the finished epochs and checkpoints, and (last) the split."""
    body = {key: value for key, value in header.items() if key != "split"}
    record = {
        **body,
        "status": status,
        "completed_epochs": done.epoch,
        "seconds": round(sum(row["seconds"] for row in done.history), 3),
        "epochs": list(done.history),
        "checkpoints": list(done.checkpoints),
        "split": header["split"],
    }
    with atomic_write(path) as handle:
        handle.write((json.dumps(record, indent=1) + "\n").encode())


def _header(cfg: TrainConfig, source: ImageSource, model: ClassifierModel, split: Split) -> dict[str, Any]:
    """What the log records about the run apart from its progress."""
    return {
        "format": LOG_FORMAT,
        "version": 1,
        "config": as_record(cfg),
        "data": absolute_data(cfg.data),
        "data_source": source.description,
        "source_images": len(source),
        "model": {k: v for k, v in model.config.items() if k != "weights"},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "split": {
            name: {"count": len(indices), "sha256": indices_sha256(indices), "indices": indices.tolist()}
            for name, indices in (("train", split.train), ("held_out", split.held_out))
        },
    }


def _outputs(out: Path) -> list[str]:
    """The names in ``out`` an earlier run wrote (moved aside by a fresh run)."""
    return [*OUTPUTS, *sorted(p.name for p in out.glob("epoch_*.pt"))]


def _row(
    epoch: int, train: tuple[float, float] | None, held_out: tuple[float, float] | None, seconds: float
) -> dict[str, Any]:
    """One epoch of the log (None: not measured: no training in epoch 0, no held-out images)."""
    return {
        "epoch": epoch,
        "train_loss": None if train is None else train[0],
        "train_accuracy": None if train is None else train[1],
        "held_out_loss": None if held_out is None else held_out[0],
        "held_out_accuracy": None if held_out is None else held_out[1],
        "seconds": round(seconds, 3),
    }


@dataclass(frozen=True)
class _Data:
    """The split and its images: training (N_train, C, H, W) with labels (N_train,); held-out likewise or None."""

    split: Split
    train: tuple[Tensor, Tensor]
    held_out: tuple[Tensor, Tensor] | None


def _data(source: ImageSource, settings: TrainSettings) -> _Data:
    """Split the source's images as ``settings`` say and load them; ConfigError if they cannot serve."""
    split = split_indices(len(source), settings.held_out, settings.seed, settings.max_images)
    if len(split.train) < settings.batch_size:
        raise ConfigError(
            f"train.batch_size={settings.batch_size} but only {len(split.train)} images are left for "
            "training: use a smaller batch, a smaller held_out or more images"
        )
    total = len(split.train) + len(split.held_out)
    try:
        check_fits_in_memory(source, total)
    except ValueError:
        raise ConfigError(
            f"the {total:,} images do not fit in this machine's memory as float32: set train.max_images"
        ) from None
    held_out = _load_images(source, split.held_out) if len(split.held_out) else None
    return _Data(split, _load_images(source, split.train), held_out)


def run_training(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainingRecord:
    """Train as a :class:`~inversion.config.TrainConfig` says and write ``out`` (module docstring); Ctrl-C stops
    after saving the last finished epoch (the log says ``interrupted``) and re-raises.

    Args:
        cfg: the resolved config (``load_config(TrainConfig, ...)``).
        resume: continue from ``out/resume.pt`` (the same run; ``train.epochs`` may grow).
        progress: show a progress bar over the training steps.
        on_epoch: called with each epoch's log row (as in ``TrainingRecord.history``) once the epoch is saved.

    Returns:
        the run's :class:`TrainingRecord`.

    Raises:
        ConfigError: too few images for a batch or too many for memory, labels beyond ``model.num_classes``,
            or a refused resume.
        ValueError: ``out`` unusable, or data missing.
    """
    settings = cfg.train
    out = check_out(cfg.out)
    if resume and not (out / RESUME_NAME).is_file():
        raise ConfigError(f"--resume: no {RESUME_NAME} in {out}; run without --resume to start")
    source = source_from_config(cfg.data)
    data = _data(source, settings)
    model = model_from_config(cfg.model, source)
    labels = data.train[1] if data.held_out is None else torch.cat([data.train[1], data.held_out[1]])
    check_labels(labels, model, source, "the training data")
    optimizer = _optimizer(model, settings)
    identity = _identity(cfg, data.split)
    with run_folder(out, _outputs(out), keep=resume):
        done = _load_state(out, identity, settings, model, optimizer) if resume else _Finished()
        write_yaml_record(
            cfg, out / "config.yaml", header="# scripts/train.py: the resolved config of this training run\n"
        )
        _epochs(
            out,
            settings,
            data,
            model,
            optimizer,
            identity,
            _header(cfg, source, model, data.split),
            done,
            progress,
            on_epoch,
        )
    return load_training_record(out / LOG_NAME)


def _epochs(
    out: Path,
    settings: TrainSettings,
    data: _Data,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    identity: str,
    header: dict[str, Any],
    done: _Finished,
    progress: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> None:
    """The epochs after ``done`` up to ``settings.epochs``, each committed to ``out`` as it finishes (then
    ``on_epoch`` is called with its row)."""
    steps = len(data.train[1]) // settings.batch_size
    first = done.epoch + 1
    bar = tqdm(total=steps * (settings.epochs - max(first, 1) + 1), desc="training", unit="step", disable=not progress)
    try:
        for epoch in range(first, settings.epochs + 1):
            started = time.perf_counter()
            trained = (
                _train_epoch(model, optimizer, *data.train, settings.batch_size, [settings.seed, epoch], bar)
                if epoch
                else None
            )
            held_out = evaluate(model, *data.held_out) if data.held_out else None
            row = _row(epoch, trained, held_out, time.perf_counter() - started)
            done = _commit(out, epoch, row, done, settings.saved_epochs, identity, model, optimizer)
            _write_log(out / LOG_NAME, header, done, "running")
            bar.set_postfix(epoch=epoch, held_out_acc=row["held_out_accuracy"])
            if on_epoch is not None:
                on_epoch(row)
        _write_log(out / LOG_NAME, header, done, "finished")
    except KeyboardInterrupt:
        _write_log(out / LOG_NAME, header, done, "interrupted")
        log.info("interrupted: %s holds epoch %d; continue with --resume", out / RESUME_NAME, done.epoch)
        raise
    finally:
        bar.close()
