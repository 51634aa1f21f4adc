"""Tests of inversion.models: architectures, shapes, determinism, final layer, weights loading."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inversion.models import (
    ACTIVATIONS,
    MODEL_NAMES,
    ClassifierModel,
    build_model,
    final_layer,
    footprint,
    load_weights,
)


def _build(name: str, **kwargs) -> ClassifierModel:
    args = {"num_classes": 7, "in_channels": 3, "image_size": (32, 32)} | kwargs
    return build_model(name, **args)


def _count(model: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def test_public_names():
    assert MODEL_NAMES == (
        "fcn",
        "lenet5",
        "lenet_zhu",
        "convnet",
        "vgg11",
        "vgg13",
        "vgg16",
        "vgg19",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
    )
    assert ACTIVATIONS == ("relu", "leaky_relu", "silu", "sigmoid", "tanh")


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward(name, in_channels):
    torch.manual_seed(0)
    model = _build(name, in_channels=in_channels)
    x = torch.randn(2, in_channels, 32, 32)
    captured = []
    final_layer(model).register_forward_hook(lambda module, args, out: captured.append(out))
    logits = model(x)
    assert logits.shape == (2, 7)
    assert len(captured) == 1 and captured[0] is logits  # the final layer produced the logits
    F.cross_entropy(logits, torch.tensor([0, 6])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert final_layer(model) is model.fc
    assert model.fc.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.fc(model.embed(x)), model(x), rtol=0, atol=0)
        assert model.embed(x).shape == (2, model.fc.in_features)


def test_fcn_default_is_papers_fcn3():
    model = build_model("fcn", num_classes=10, in_channels=1, image_size=(28, 28))
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(300, 784), (300,), (300, 300), (300,), (10, 300), (10,)]
    assert _count(model, nn.ReLU) == 2


def test_fcn_depth_and_width():
    model = build_model("fcn", num_classes=10, in_channels=3, image_size=(8, 8), width=50, depth=5)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(192, 50), (50, 50), (50, 50), (50, 50), (50, 10)]
    two = build_model("fcn", num_classes=10, in_channels=1, image_size=(28, 28), depth=2)
    assert [tuple(p.shape) for p in two.parameters() if p.dim() == 2] == [(300, 784), (10, 300)]


@pytest.mark.parametrize(("in_channels", "side", "flat"), [(1, 28, 256), (3, 32, 400)])
def test_lenet5_flat_size(in_channels, side, flat):
    model = build_model("lenet5", num_classes=10, in_channels=in_channels, image_size=(side, side))
    linears = [m for m in model.features.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(flat, 120), (120, 84)]
    assert (model.fc.in_features, model.fc.out_features) == (84, 10)
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [6, 16]


@pytest.mark.parametrize(("in_channels", "side", "flat"), [(3, 32, 768), (1, 28, 588)])
def test_lenet_zhu_flat_size_and_init(in_channels, side, flat):
    model = build_model("lenet_zhu", num_classes=100, in_channels=in_channels, image_size=(side, side))
    assert model.fc.in_features == flat
    assert _count(model, nn.Sigmoid) == 3 and _count(model, nn.ReLU) == 0
    params = torch.cat([p.flatten() for p in model.parameters()])
    assert params.min() >= -0.5 and params.max() <= 0.5
    assert params.std() > 0.25  # U(-0.5, 0.5) has std 0.289; torch's default init is far smaller here


@pytest.mark.parametrize("width", [64, 8])
def test_convnet_flat_size(width):
    kwargs = {} if width == 64 else {"width": width}
    model = _build("convnet", **kwargs)
    assert model.fc.in_features == 36 * width
    assert _count(model, nn.Conv2d) == 8 and _count(model, nn.BatchNorm2d) == 8


@pytest.mark.parametrize(("name", "convs"), [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)])
def test_vgg_layout(name, convs):
    model = _build(name)
    assert _count(model, nn.Conv2d) == convs
    assert _count(model, nn.BatchNorm2d) == convs
    assert _count(model, nn.MaxPool2d) == 5
    assert model.fc.in_features == 4096
    first_linear = next(m for m in model.features.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == 512
    assert _count(model, nn.Dropout) == 0
    assert _count(_build(name, dropout=True), nn.Dropout) == 2


def test_vgg_flat_size_at_224():
    model = build_model("vgg11", num_classes=1000, in_channels=3, image_size=(224, 224))
    first_linear = next(m for m in model.features.modules() if isinstance(m, nn.Linear))
    assert first_linear.in_features == 25088


@pytest.mark.parametrize(
    ("name", "convs", "dim"),
    [
        ("resnet18", 20, 512),
        ("resnet34", 36, 512),
        ("resnet50", 53, 2048),
        ("resnet101", 104, 2048),
        ("resnet152", 155, 2048),
    ],
)
def test_resnet_layout(name, convs, dim):
    # stem + 2 or 3 convs per block + 3 (basic) or 4 (bottleneck) downsampling shortcuts
    model = _build(name)
    assert _count(model, nn.Conv2d) == convs
    assert _count(model, nn.MaxPool2d) == 0
    assert model.fc.in_features == dim
    stem = model.features.stem[0]
    assert (stem.kernel_size, stem.stride, stem.bias) == ((3, 3), (1, 1), None)


def test_resnet50_embedding_dim():
    model = _build("resnet50").eval()
    with torch.no_grad():
        assert model.embed(torch.randn(1, 3, 32, 32)).shape == (1, 2048)


def test_resnet_width():
    assert _build("resnet18", width=16).fc.in_features == 128
    assert _build("resnet50", width=16).fc.in_features == 512


def test_resnet18_accepts_224():
    model = build_model("resnet18", num_classes=1000, in_channels=3, image_size=(224, 224)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_conv_bn_init():
    model = _build("vgg11")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    conv = model.features[0][0]  # 64 x 3 x 3 x 3, kaiming fan_out: std = sqrt(2 / (64 * 9))
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


def test_construction_leaves_batchnorm_statistics_untouched():
    model = _build("convnet", width=4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 1)
            assert m.num_batches_tracked.item() == 0
    assert model.training


@pytest.mark.parametrize("name", ["lenet5", "convnet", "resnet18"])
def test_same_seed_same_parameters(name):
    a, b = _build(name, seed=3), _build(name, seed=3)
    c = _build(name, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["fc.weight"], sc["fc.weight"])


def test_build_leaves_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _build("lenet5")
    _build("resnet18", width=8)
    assert torch.equal(torch.get_rng_state(), before)


def test_config_is_json_and_rebuilds():
    model = _build("fcn", in_channels=1, image_size=(28, 28), width=20, seed=5, final_bias=False)
    config = json.loads(json.dumps(model.config))
    assert config == {
        "name": "fcn",
        "num_classes": 7,
        "in_channels": 1,
        "image_size": [28, 28],
        "activation": "relu",
        "seed": 5,
        "final_bias": False,
        "width": 20,
        "depth": 3,
    }
    again = build_model(**config)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_nonlinearity_uses_the_activation(activation):
    kinds = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "silu": nn.SiLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
    model = _build("lenet5", activation=activation)
    found = [type(m) for m in model.modules() if type(m) in kinds.values()]
    assert found == [kinds[activation]] * 4


@pytest.mark.parametrize(
    ("name", "kwargs", "count"),
    [
        ("fcn", {}, 2),
        ("lenet_zhu", {}, 3),
        ("convnet", {"width": 4}, 8),
        ("vgg11", {}, 10),
        ("resnet18", {"width": 4}, 17),
        ("resnet50", {"width": 4}, 49),
    ],
)
def test_silu_everywhere(name, kwargs, count):
    model = _build(name, activation="silu", **kwargs)
    assert _count(model, nn.SiLU) == count
    assert _count(model, nn.ReLU) == 0 and _count(model, nn.Sigmoid) == 0


def test_leaky_relu_slope():
    model = _build("resnet18", activation="leaky_relu", width=4)
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.01}


def test_default_activations():
    assert _count(_build("lenet_zhu"), nn.Sigmoid) == 3
    assert _build("lenet_zhu").config["activation"] == "sigmoid"
    assert _count(_build("lenet5"), nn.ReLU) == 4
    assert _build("convnet", width=4).config["activation"] == "relu"


def test_final_bias_false():
    model = _build("resnet18", width=4, final_bias=False)
    layer = final_layer(model)
    assert isinstance(layer, nn.Linear) and layer.bias is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_final_layer_of_foreign_models():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    assert final_layer(plain) is plain[3]

    class Marked(nn.Module):
        final_layer_name = "head.proj"

        def __init__(self):
            super().__init__()
            self.head = nn.Module()
            self.head.proj = nn.Linear(4, 2)
            self.aux = nn.Linear(4, 9)  # registered last, but not the marked one

    marked = Marked()
    assert final_layer(marked) is marked.head.proj


def test_final_layer_errors():
    with pytest.raises(ValueError, match="final_layer_name"):
        final_layer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
    wrong = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    wrong.final_layer_name = "1"
    with pytest.raises(ValueError, match="not an nn.Linear"):
        final_layer(wrong)
    wrong.final_layer_name = "nope"
    with pytest.raises(ValueError, match="names no submodule"):
        final_layer(wrong)


def test_unknown_model_and_activation():
    with pytest.raises(ValueError) as err:
        _build("alexnet")
    assert all(name in str(err.value) for name in MODEL_NAMES)
    with pytest.raises(ValueError) as err:
        _build("lenet5", activation="gelu")
    assert all(name in str(err.value) for name in ACTIVATIONS)


@pytest.mark.parametrize(
    ("name", "option"),
    [
        ("lenet5", {"depth": 4}),
        ("vgg16", {"width": 32}),
        ("resnet18", {"dropout": True}),
        ("convnet", {"depth": 3}),
        ("lenet_zhu", {"width": 8}),
    ],
)
def test_unused_option_refused(name, option):
    with pytest.raises(ValueError, match=f"{next(iter(option))}.*{name}"):
        _build(name, **option)


@pytest.mark.parametrize(("name", "side", "minimum"), [("lenet5", 8, 16), ("convnet", 8, 9), ("vgg11", 16, 32)])
def test_too_small_input(name, side, minimum):
    kwargs = {"width": 4} if name == "convnet" else {}
    with pytest.raises(ValueError, match=f"too small.*{minimum}x{minimum}"):
        _build(name, image_size=(side, side), **kwargs)
    _build(name, image_size=(minimum, minimum), **kwargs)  # the stated minimum really works


@pytest.mark.parametrize(
    "kwargs",
    [
        {"depth": 1},
        {"width": 0},
        {"num_classes": 0},
        {"in_channels": 0},
        {"image_size": (28,)},
        {"image_size": (0, 28)},
    ],
)
def test_invalid_sizes(kwargs):
    with pytest.raises(ValueError):
        _build("fcn", **kwargs)


def test_one_class_and_many_channels():
    model = _build("convnet", width=4, num_classes=1, in_channels=5)
    assert model(torch.randn(2, 5, 32, 32)).shape == (2, 1)


# ---- load_weights ----

_UNPICKLED = []


def _record_unpickling():
    _UNPICKLED.append(True)
    return "pwned"


class Evil:
    """Runs code when unpickled: a stand-in for a malicious checkpoint."""

    def __reduce__(self):
        return (_record_unpickling, ())


@pytest.mark.parametrize("wrapped", [False, True])
def test_load_weights_round_trip(tmp_path, wrapped):
    source = _build("lenet5", seed=0).eval()
    path = tmp_path / "w.pt"
    state = source.state_dict()
    torch.save({"state_dict": state} if wrapped else state, path)
    target = _build("lenet5", seed=1).eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(source(x), target(x))
    assert load_weights(target, path) is target
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_load_weights_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _build("lenet5").state_dict(), "evil": Evil()}, path)
    with pytest.raises(ValueError, match="security"):
        load_weights(_build("lenet5"), path)
    assert _UNPICKLED == []


def test_load_weights_mismatches(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_build("lenet5", num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatch.*fc\.weight"):
        load_weights(_build("lenet5"), path)
    state = _build("lenet5").state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing keys: fc\.bias.*unexpected keys: extra\.weight"):
        load_weights(_build("lenet5"), path)


def test_load_weights_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_weights(_build("lenet5"), tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt holds something other than tensors and plain data"):
        load_weights(_build("lenet5"), junk)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="no state_dict"):
        load_weights(_build("lenet5"), listed)


def test_load_weights_cut_file_is_called_truncated_not_unsafe(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(_build("lenet5").state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as caught:
        load_weights(_build("lenet5"), path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message and "security" not in message


def test_load_weights_of_a_file_saved_from_cuda(tmp_path, monkeypatch):
    source = _build("lenet5", seed=4)
    path = tmp_path / "w.pt"
    with monkeypatch.context() as patched:  # every storage tagged cuda:0, as torch.save on a GPU writes it
        patched.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(source.state_dict(), path)
    if not torch.cuda.is_available():  # the file really names a CUDA device
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = load_weights(_build("lenet5"), path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_load_weights_refuses_non_finite_values(tmp_path, bad):
    state = {name: value.clone() for name, value in _build("lenet5").state_dict().items()}
    state["fc.weight"][2, 3] = bad
    state["fc.bias"][0] = bad
    path = tmp_path / "w.pt"
    torch.save(state, path)
    target = _build("lenet5", seed=1)
    before = {name: value.clone() for name, value in target.state_dict().items()}
    with pytest.raises(ValueError, match=r"w\.pt holds non-finite values \(NaN or inf\) in 'fc\.weight'") as caught:
        load_weights(target, path)
    assert "\n" not in str(caught.value)
    assert all(torch.equal(before[name], value) for name, value in target.state_dict().items())  # left untouched


def test_footprint_counts_parameters_and_the_activations_autograd_keeps():
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3)
    )
    # P: conv 2·9 + 2, batch norm 2 + 2, linear 8·3 + 3; A per 1x4x4 input: conv 2·16, ReLU 2·16, pool 2·4,
    # linear 3 (batch norm and flatten keep nothing of their own)
    assert footprint(net, (1, 4, 4)) == (20 + 4 + 27, 32 + 32 + 8 + 3)
    net[0].weight.requires_grad_(False)
    assert footprint(net, (1, 4, 4))[0] == 2 + 4 + 27  # trainable parameters only
    with torch.device("meta"):  # a model built without memory is measured the same way
        fcn = build_model("fcn", num_classes=10, in_channels=1, image_size=(28, 28), width=50, depth=2)
    assert footprint(fcn, (1, 28, 28)) == (784 * 50 + 50 + 50 * 10 + 10, 50 + 50 + 10)
