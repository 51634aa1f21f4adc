"""Time one attack step against one client forward+backward on the same model and batch
(issue target: a step costs at most 3x the client's computation), with steps per second and peak memory.

    python scripts/bench_attack_speed.py [--batch-size 8] [--steps 20] [--device auto|cpu|cuda]

Untrained LeNet-5, ConvNet (width 64) and ResNet-18 with 100 classes on random 3x32x32 images; the attack
uses oracle labels, cosine matching, signed Adam, box constraints and a TV prior, as the shipped configs.
"""
import inversion  # noqa: F401  (first: the torchvision compatibility shim)

import argparse
import platform
import resource

import torch

from inversion.attack import AttackSettings, Inversion, plan_labels
from inversion.fl import client_gradients, client_update
from inversion.models import build_model
from inversion.attack.settings import resolve_device
from label_restore.benchmark import time_call


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 2**20 if platform.system() == "Darwin" else 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, K={args.batch_size}")
    print("| model | client fwd+bwd (ms) | attack step (ms) | ratio | steps/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, options in (("lenet5", {}), ("convnet", {"width": 64}), ("resnet18", {})):
        model = build_model(name, num_classes=100, in_channels=3, image_size=(32, 32), **options).to(device)
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(args.batch_size, 3, 32, 32, generator=generator).to(device)
        labels = torch.randint(0, 100, (args.batch_size,), generator=generator).to(device)
        client_ms, _ = time_call(lambda: client_gradients(model, images, labels), repeats=10, warmup=2)
        update = client_update(model, images, labels)
        attack = Inversion(
            model, update, plan_labels("oracle", update, model, true_labels=labels),
            AttackSettings(max_steps=args.steps + 2, checkpoint_every=0),
            bounds=(torch.full((1, 3, 1, 1), -3.0), torch.full((1, 3, 1, 1), 3.0)), priors={"tv": 1e-4}, device=device,
        )
        result = attack.run(progress=False)
        step_ms = 1e3 * result.seconds / result.steps
        print(f"| {name} | {client_ms:.1f} | {step_ms:.1f} | {step_ms / client_ms:.2f}x | {1e3 / step_ms:.1f} | "
              f"{peak_memory_mib(device):,.0f} |")


if __name__ == "__main__":
    main()
