"""Disaggregation in the pipeline: the invert driver records it, the API fills a bare update's metadata for it, and
the span's first-layer probe follows the model's dtype."""

import dataclasses
import json

import torch
from torch import nn

import inversion as gl
from inversion.attack.span import first_linear_weight
from inversion.config import CONFIG_DIR, InvertConfig, load_config
from inversion.data import SPECS
from inversion.experiments.invert import run_inversion
from inversion.fl import SharedUpdate, client_update
from inversion.models import build_model

SHAPE = (1, 4, 4)
MNIST = SPECS["mnist"]  # the default preset's dataset
EPS32 = torch.finfo(torch.float32).eps
# verified vertices of float32 gradients, as in test_disaggregation_attack: a few eps32 per unit pixel; the MNIST
# normalisation divides by its std
PIXEL_TOLERANCE = 8 * EPS32 / MNIST.std[0]


def sparse_batch(seed: int, shape: tuple[int, ...] = SHAPE, k: int = 3) -> torch.Tensor:
    """K MNIST-normalised images (K, *shape), each with 4 bright pixels where the others are 0 (the lower bound)."""
    generator = torch.Generator().manual_seed(seed)
    size = torch.Size(shape).numel()
    images = torch.zeros(k, size)
    pixels = torch.randperm(size, generator=generator)
    for i in range(k):
        images[i, pixels[4 * i : 4 * i + 4]] = 0.2 + 0.8 * torch.rand(4, generator=generator)
    return ((images - MNIST.mean[0]) / MNIST.std[0]).reshape(k, *shape)


def fcn(shape: tuple[int, ...] = SHAPE, seed: int = 4) -> nn.Module:
    """FCN-3 on images of ``shape`` with 10 classes (C > K: the final layer verifies too)."""
    torch.manual_seed(seed)
    first = nn.Linear(torch.Size(shape).numel(), 10)
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))


def test_an_invert_run_records_what_disaggregation_verified(tmp_path):
    """A saved update of a registry FCN (no private batch, so no data is read): results.json holds the attack's
    record, as plain JSON."""
    model = build_model("fcn", num_classes=10, in_channels=1, image_size=SHAPE[1:], width=10, depth=3, seed=4)
    images, labels = sparse_batch(14), torch.tensor([0, 1, 2])
    update = client_update(model, images, labels, dataset="mnist").save(tmp_path / "update.pt")
    overrides = [f"out={tmp_path / 'run'}", f"update={update}", "attack.method=disaggregation", "attack.max_steps=5"]
    cfg = load_config(InvertConfig, CONFIG_DIR / "invert" / "default.yaml", [*overrides, "attack.labels=ilrg"])
    done = run_inversion(cfg, progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    record = saved["attack"]["disaggregation"]
    assert record == done.result.disaggregation == done.results["attack"]["disaggregation"]
    assert record["route"] == "exact" and record["found"] == record["batch_size"] == 3 and record["on_image"]
    assert sorted(record["labels"]) == [0, 1, 2] and saved["attack"]["steps"] == 0
    order = torch.as_tensor(record["labels"])  # the labels are distinct: each image is the true one of its label
    assert torch.allclose(done.result.images, images[order], rtol=0, atol=PIXEL_TOLERANCE)


def test_a_gradient_matching_run_records_no_disaggregation(tmp_path):
    model = build_model("fcn", num_classes=10, in_channels=1, image_size=SHAPE[1:], width=10, depth=3, seed=4)
    update = client_update(model, sparse_batch(14), torch.tensor([0, 1, 2]), dataset="mnist")
    path = update.save(tmp_path / "update.pt")
    overrides = [f"out={tmp_path / 'run'}", f"update={path}", "attack.max_steps=2", "attack.labels=ilrg"]
    cfg = load_config(InvertConfig, CONFIG_DIR / "invert" / "default.yaml", overrides)
    assert "disaggregation" not in run_inversion(cfg, progress=False).results["attack"]


def test_the_api_gives_a_bare_update_the_presets_normalisation_for_disaggregation():
    """Updates that record no normalisation (and one no input shape either): the labels and the attack read the
    default preset's (MNIST) and recover the batch exactly; the result is still tied to the update as given."""
    shape = (MNIST.channels, *MNIST.image_size)
    model, images, labels = fcn(shape), sparse_batch(14, shape), torch.tensor([0, 1, 2])
    full = client_update(model, images, labels, mean=MNIST.mean, std=MNIST.std)
    for bare in (
        SharedUpdate.from_gradients(full.gradients, 3, input_shape=shape),
        SharedUpdate.from_gradients(full.gradients, 3),
    ):
        assert bare.meta.mean is None
        result = gl.invert(bare, model, labels="disaggregation", method="disaggregation", progress=False)
        assert result.restoration is not None and result.restoration.details["recovered"] == 3
        assert result.attack.disaggregation["route"] == "exact"
        assert torch.allclose(result.images, images[result.labels], rtol=0, atol=PIXEL_TOLERANCE)
        assert result.meta == dataclasses.replace(bare.meta, mean=MNIST.mean, std=MNIST.std, input_shape=shape)
        assert result.update_sha256 == bare.sha256


def test_the_first_linear_layer_of_a_float64_model_is_found():
    model = fcn().double()
    assert first_linear_weight(model, SHAPE) == ("1.weight", model[1])
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(32, 10)).double()
    assert first_linear_weight(conv, SHAPE) is None  # a convolution first: not on the flattened input
