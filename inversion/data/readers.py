"""Read the dataset files torchvision keeps under a data root, without torchvision.

Layouts (``root`` is the folder given to ``torchvision.datasets.X(root, ...)``)::

    MNIST     root/MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz]
              root/MNIST/raw/{train,t10k}-labels-idx1-ubyte[.gz]
    CIFAR-100 root/cifar-100-python/{train,test}         (pickle: b"data", b"fine_labels")
    CIFAR-10  root/cifar-10-batches-py/data_batch_1..5   (train) / test_batch (test)
                                                         (pickle: b"data", b"labels")

No checksums are checked, so hand-made files of the same format are read as well; CIFAR
pickles are read with an unpickler that builds only plain data and numpy arrays.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from inversion.data.safe_pickle import ArrayUnpickler, RefusedPickleError
from inversion.data.specs import SPECS
from inversion.utils.errors import InputError

__all__ = ["expected_files", "read_idx", "read_torchvision_files"]

_FOLDERS = {"mnist": "MNIST/raw", "cifar100": "cifar-100-python", "cifar10": "cifar-10-batches-py"}
_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "mnist": {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    },
    "cifar100": {"train": ("train",), "test": ("test",)},
    "cifar10": {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
}
_CIFAR_LABEL_KEY = {"cifar100": "fine_labels", "cifar10": "labels"}
_IDX_UBYTE = 0x08


def expected_files(name: str, root: str | Path, split: str) -> list[str]:
    """The files ``read_torchvision_files`` needs, for messages ("[.gz]" = either form)."""
    suffix = "[.gz]" if name == "mnist" else ""
    return [f"{Path(root) / _FOLDERS[name] / file}{suffix}" for file in _FILES[name][split]]


def read_torchvision_files(name: str, root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(images uint8 (N, H, W, C), labels int64 (N,)) of ``name`` ("mnist", "cifar100",
    "cifar10") and ``split`` ("train"/"test"), or None when not all files are present.
    Raises ValueError when a present file is malformed."""
    folder = Path(root) / _FOLDERS[name]
    located = [_locate(folder / file, gz_allowed=name == "mnist") for file in _FILES[name][split]]
    paths = [path for path in located if path is not None]
    if len(paths) < len(located):
        return None
    if name == "mnist":
        images, labels = _read_mnist(*paths)
    else:
        parts = [_read_cifar_pickle(path, _CIFAR_LABEL_KEY[name]) for path in paths]
        images = np.concatenate([part[0] for part in parts])
        labels = np.concatenate([part[1] for part in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= SPECS[name].num_classes):
        raise InputError(
            f"{folder}: labels outside 0..{SPECS[name].num_classes - 1} (found {labels.min()}..{labels.max()})"
        )
    return images, labels


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file of unsigned bytes (plain or ``.gz``) as a uint8 array of its dims.

    Format: magic = two zero bytes, type byte 0x08, number of dims; then each dim as a
    big-endian uint32; then the data. Raises ValueError on anything else."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as file:
            data = file.read()
    except (gzip.BadGzipFile, EOFError) as error:
        raise InputError(f"{path}: not a readable gzip file ({error})") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        raise InputError(
            f"{path}: not an IDX file of unsigned bytes (magic number {data[:4].hex() or 'missing'}, expected 000008NN)"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{path}: IDX header is cut short ({len(data)} bytes, {ndim} dims need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != int(np.prod(dims)):
        raise InputError(
            f"{path}: IDX dims {dims} need {int(np.prod(dims))} data bytes, the file holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _locate(path: Path, *, gz_allowed: bool) -> Path | None:
    """``path`` if it exists, else ``path.gz`` if allowed and it exists, else None."""
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz_allowed and gz.is_file() else None


def _read_mnist(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST IDX image and label files -> (N, 28, 28, 1) uint8, (N,) int64."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != SPECS["mnist"].image_size:
        raise InputError(f"{images_path}: expected MNIST images of dims (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise InputError(
            f"{labels_path}: expected {len(images)} labels (dims ({len(images)},)), got dims {labels.shape}"
        )
    return images[..., None], labels.astype(np.int64)


def _read_cifar_pickle(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> images (N, 32, 32, 3) uint8 (from row-major CHW rows of
    3072 bytes), labels (N,) int64. Read with ``ArrayUnpickler``: a pickle that would build
    anything but plain data and numpy arrays is refused (ValueError), never run."""
    try:
        with open(path, "rb") as file:
            batch = ArrayUnpickler(file, encoding="bytes").load()  # bytes: Python 2 str, as in the real files
    except RefusedPickleError as error:
        raise InputError(
            f"{path}: refused: not a plain pickle of arrays, so reading it could run code "
            f"({error}); delete it or replace it with the real CIFAR batch"
        ) from error
    except Exception as error:  # any other unpickling failure means: not a CIFAR batch
        raise InputError(f"{path}: not a readable CIFAR python batch ({error})") from error
    if not isinstance(batch, dict):
        raise InputError(f"{path}: expected a dict in the CIFAR batch, got {type(batch).__name__}")
    data, labels = _field(batch, "data", path), _field(batch, label_key, path)
    data = np.asarray(data)
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InputError(f"{path}: expected data of uint8 rows of 3072 values, got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise InputError(f"{path}: expected {len(data)} labels, got shape {labels.shape}")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _field(batch: dict, key: str, path: Path):
    """``batch[b"key"]`` (as pickled by Python 2) or ``batch["key"]``."""
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    raise InputError(f"{path}: the CIFAR batch has no {key!r} entry (keys: {sorted(map(str, batch))})")
