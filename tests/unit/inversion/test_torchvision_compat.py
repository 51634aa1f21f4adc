"""The torchvision compatibility shim: torchvision models and lpips import and run on this torch."""

import subprocess
import sys

import torch

from inversion import _torchvision_compat as compat


def test_torchvision_models_and_lpips_work():
    import lpips
    import torchvision

    net = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 1000)
    assert issubclass(lpips.LPIPS, torch.nn.Module)


def test_stubs_only_when_the_compiled_extension_cannot_load():
    path = compat._extension_path()
    try:
        torch.ops.load_library(path)
        loads = True
    except OSError:
        loads = False
    assert compat.TORCHVISION_OPS_STUBBED is (not loads)


def test_fresh_interpreter_imports_package_then_torchvision_and_lpips():
    code = "import inversion, torchvision.models, lpips; print(torchvision.models.vgg11().__class__.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "VGG"
