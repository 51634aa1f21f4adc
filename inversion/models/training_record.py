"""What a training run recorded (``train_log.json``), read back: the images a model was trained on, and more.

:mod:`inversion.experiments.train` writes the log; :func:`load_training_record` reads it, so a client can draw its
batch from the images the model was trained on, or from held-out ones (``client.images``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inversion.utils.errors import InputError, MissingFileError
from inversion.utils.fileio import sha256_file

__all__ = ["LOG_FORMAT", "LOG_NAME", "TrainingRecord", "indices_sha256", "load_training_record"]

LOG_NAME = "train_log.json"
LOG_FORMAT = "gradleak.TrainingLog"


def indices_sha256(indices: np.ndarray) -> str:
    """sha256 of the indices as little-endian int64 bytes."""
    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


@dataclass(frozen=True)
class TrainingRecord:
    """What a training run recorded in ``train_log.json``.

    Attributes:
        train_indices: (N_train,) int64, sorted positions in the data source of the images trained on.
        held_out_indices: (N_held,) int64, sorted positions of the images kept out of training.
        data_source: one line: where the images came from.
        data: the ``data`` config group with absolute ``root`` and ``folder``:
            ``source_from_config(DataConfig(**record.data))`` reloads the source.
        model: the model's build arguments: ``build_model(**record.model)`` builds it untrained.
        history: one dict per finished epoch (epoch 0: the untrained model): ``epoch``, ``train_loss``,
            ``train_accuracy`` (mean over the epoch's batches while training; None for epoch 0),
            ``held_out_loss``, ``held_out_accuracy`` (eval mode; None without held-out images), ``seconds``.
        checkpoints: epoch -> its checkpoint file.
        status: ``running``, ``interrupted`` or ``finished``.
        log_path: the log file.
    """

    train_indices: np.ndarray
    held_out_indices: np.ndarray
    data_source: str
    data: dict[str, Any]
    model: dict[str, Any]
    history: list[dict[str, Any]]
    checkpoints: dict[int, Path]
    status: str
    log_path: Path


def load_training_record(path: str | Path) -> TrainingRecord:
    """The record of a training run, from its ``train_log.json``, one of its checkpoints or its ``out`` folder.

    A checkpoint must be one the log lists, with the sha256 it was saved with; the index lists must match
    their logged sha256.

    Raises:
        FileNotFoundError: no log there.
        ValueError: not a training log, a checkpoint the log does not list (or that changed), or a split whose
            indices do not match their sha256.
    """
    path = Path(path)
    log_path = path / LOG_NAME if path.is_dir() else path if path.suffix == ".json" else path.parent / LOG_NAME
    if not log_path.is_file():
        raise MissingFileError(f"no training log at {log_path}")
    try:
        record = json.loads(log_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{log_path} is not valid JSON ({err}); it is not a training log") from None
    if not isinstance(record, dict) or record.get("format") != LOG_FORMAT:
        raise InputError(f"{log_path} is not a training log ({LOG_FORMAT})")
    try:
        return _record(record, path, log_path)
    except (KeyError, TypeError) as err:
        raise InputError(f"{log_path} is an incomplete training log (missing or malformed: {err})") from None


def _record(record: dict[str, Any], path: Path, log_path: Path) -> TrainingRecord:
    """The TrainingRecord of a parsed log, checking ``path`` if it is a checkpoint, and the split's digests."""
    checkpoints = {c["epoch"]: log_path.parent / c["file"] for c in record["checkpoints"]}
    if path.suffix == ".pt":
        digests = {c["file"]: c["sha256"] for c in record["checkpoints"]}
        if digests.get(path.name) != sha256_file(path):
            raise InputError(f"{path} is not a checkpoint listed in {log_path} (or it changed since it was saved)")
    indices = {}
    for name in ("train", "held_out"):
        entry = record["split"][name]
        indices[name] = np.asarray(entry["indices"], dtype=np.int64)
        if indices_sha256(indices[name]) != entry["sha256"]:
            raise InputError(f"{log_path}: the {name} indices do not match their sha256")
    return TrainingRecord(
        indices["train"],
        indices["held_out"],
        record["data_source"],
        record["data"],
        record["model"],
        record["epochs"],
        checkpoints,
        record["status"],
        log_path,
    )
