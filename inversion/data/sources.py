"""Resolve a dataset name to an ImageSource, trying every way to get real images.

For mnist / cifar100 / cifar10, in order (exactly one INFO line on the
``inversion.data`` logger names the source used; ``ImageSource.description`` too):

1. torchvision's dataset files already under the data root (read by ``readers``);
2. a torchvision download into the root, if ``download`` (failures are caught);
3. a registry sample pack (``packs``): a small sample of real images, fetched from
   the registry only if ``download``;
4. else DataUnavailableError, saying how to provide the data (its subclass DataRootError
   when the data root is a file, or the cache must be written and cannot be).

``folder`` is an ImageFolder of the user's own images (``folder.FolderSource``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
from pathlib import Path

from inversion.data.errors import DATA_ROOT_ENV, DataUnavailableError, PackError
from inversion.data.folder import FolderSource
from inversion.data.image_source import ArraySource, ImageSource
from inversion.data.packs import ensure_pack
from inversion.data.readers import expected_files, read_torchvision_files
from inversion.data.specs import DATASET_NAMES, SPECS
from inversion.utils.errors import InputError

__all__ = ["DataUnavailableError", "default_data_root", "load_source"]

log = logging.getLogger("inversion.data")

DOWNLOAD_SOCKET_TIMEOUT_S = 15
SPLITS = ("train", "test")
_TORCHVISION_CLASSES = {"mnist": "MNIST", "cifar100": "CIFAR100", "cifar10": "CIFAR10"}


def default_data_root() -> Path:
    """The data root: ``$GRADLEAK_DATA`` if set, else ``data`` (relative to the cwd)."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "data").expanduser()


def load_source(
    name: str,
    *,
    root: str | os.PathLike | None = None,
    split: str = "test",
    download: bool = True,
    folder: str | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> ImageSource:
    """The images of dataset ``name`` (one of DATASET_NAMES) as an ImageSource.

    ``root``: data root (default ``default_data_root()``); ``split``: "train" or "test"
    (folder: ignored); ``download``: allow network downloads (torchvision, registry packs;
    with False, only files already on disk and cached packs are used). ``folder`` and
    ``image_size``/``channels``/``mean``/``std`` are for ``name="folder"`` only; for the
    fixed datasets they must be None (or equal to the dataset's spec).
    """
    if name not in DATASET_NAMES:
        raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    if name == "folder":
        if folder is None:
            raise InputError("the 'folder' dataset needs folder=PATH (one subfolder of images per class)")
        source: ImageSource = FolderSource(folder, image_size=image_size, channels=channels, mean=mean, std=std)
    else:
        if folder is not None:
            raise InputError(f"folder= is only for the 'folder' dataset, not {name!r}")
        _check_fixed_options(name, image_size=image_size, channels=channels, mean=mean, std=std)
        source = _load_fixed(name, Path(root) if root is not None else default_data_root(), split, download)
    log.info("data source: %s", source.description)
    return source


def _load_fixed(name: str, root: Path, split: str, download: bool) -> ArraySource:
    """mnist / cifar100 / cifar10 from the first source that works (module docstring)."""
    arrays = read_torchvision_files(name, root, split)
    if arrays is not None:
        return _array_source(name, arrays, f"torchvision dataset files under {root} ({split} split")
    download_failure = _torchvision_download(name, root, split) if download else "not allowed"
    if download_failure is None:
        arrays = read_torchvision_files(name, root, split)
        if arrays is not None:
            return _array_source(name, arrays, f"downloaded by torchvision into {root} ({split} split")
        download_failure = "gave no readable files"
    try:
        images, labels, pack = ensure_pack(name, root, fetch=download)
    except PackError as error:
        raise DataUnavailableError(_unavailable_message(name, root, split, download_failure, error)) from error
    description = f"{name}: {pack}; no torchvision files under {root}, torchvision download {download_failure}"
    return ArraySource(SPECS[name], images, labels, description)


def _array_source(name: str, arrays, where: str) -> ArraySource:
    """ArraySource of torchvision-layout arrays, described as ``"<name>: <where>, N images)"``."""
    images, labels = arrays
    return ArraySource(SPECS[name], images, labels, f"{name}: {where}, {len(labels):,} images)")


def _torchvision_download(name: str, root: Path, split: str) -> str | None:
    """Let torchvision download ``name`` into ``root``: None on success, else a short
    reason ("failed (URLError)"). Any exception is caught and logged at DEBUG; sockets
    time out after DOWNLOAD_SOCKET_TIMEOUT_S; torchvision's printed chatter goes to DEBUG."""
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            import torchvision.datasets

            dataset_class = getattr(torchvision.datasets, _TORCHVISION_CLASSES[name])
            dataset_class(str(root), train=split == "train", download=True)
    except Exception as error:  # no network, HTTP errors, bad archives, missing torchvision ...
        log.debug("torchvision download of %s into %s failed: %r\n%s", name, root, error, chatter.getvalue())
        return f"failed ({type(error).__name__})"
    finally:
        socket.setdefaulttimeout(previous_timeout)
    log.debug("torchvision download of %s into %s:\n%s", name, root, chatter.getvalue())
    return None


def _unavailable_message(name: str, root: Path, split: str, download_failure: str, pack_error: PackError) -> str:
    """The DataUnavailableError text: what was tried and the three ways to provide the data."""
    files = "\n      ".join(expected_files(name, root, split))
    return (
        f"no {name} images ({split} split) are available. Tried: torchvision files under {root} "
        f"(not there), torchvision download ({download_failure}), registry sample packs "
        f"({' '.join(str(pack_error).split())}).\n"
        f"Provide the data in one of three ways:\n"
        f"  1. put torchvision's {name} files under {root}:\n      {files}\n"
        f"  2. allow download (download=True) on a machine with internet access, and torchvision "
        f"downloads them there;\n"
        f"  3. fetch the registry sample packs: python scripts/fetch_data.py {name}  (or: make data).\n"
        f"For your own images use the 'folder' dataset (load_source('folder', folder=PATH), one "
        f"subfolder per class). Set {DATA_ROOT_ENV} to use another data root than ./data."
    )


def _check_fixed_options(name: str, **options) -> None:
    """Reject image_size/channels/mean/std that differ from a fixed dataset's spec."""
    spec = SPECS[name]
    for option, value in options.items():
        fixed = getattr(spec, option)
        if value is not None and (value if option == "channels" else tuple(value)) != fixed:
            raise InputError(
                f"{option}={value!r} cannot be set for {name}: it is fixed by the dataset "
                f"({option}={fixed!r}); options like this are for the 'folder' dataset"
            )
