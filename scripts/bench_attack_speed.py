"""Time one attack step against one client forward+backward on the same model and batch
(issue target: a step costs at most 3x the client's computation), with steps per second and peak memory.

    python scripts/bench_attack_speed.py [--batch-size 8] [--steps 20] [--device auto|cpu|cuda] [--restarts R]

Untrained LeNet-5, ConvNet (width 64) and ResNet-18 with 100 classes on random 3x32x32 images; the attack
uses oracle labels, cosine matching, signed Adam, box constraints and a TV prior, as the shipped configs.
With ``--restarts R`` (R > 1) a second table times R restarts run one after another against the same R
run as one batched problem (``attack.batch_restarts``), per step of all R restarts, on these models and on
the paper's FCN-3 (MNIST-sized, K=50).
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
    parser.add_argument("--restarts", type=int, default=1, help="R > 1: also time R sequential vs batched restarts")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, K={args.batch_size}")
    print("| model | client fwd+bwd (ms) | attack step (ms) | ratio | steps/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, options in MODELS:
        model, images, labels = problem(name, options, args.batch_size, 3, device)
        client_ms, _ = time_call(lambda: client_gradients(model, images, labels), repeats=10, warmup=2)
        result = attack(model, images, labels, args.steps + 2, device).run(progress=False)
        step_ms = 1e3 * result.seconds / result.steps
        print(f"| {name} | {client_ms:.1f} | {step_ms:.1f} | {step_ms / client_ms:.2f}x | {1e3 / step_ms:.1f} | "
              f"{peak_memory_mib(device):,.0f} |")
    if args.restarts > 1:
        restarts_table(args.restarts, args.batch_size, args.steps, device)


MODELS = (("lenet5", {}), ("convnet", {"width": 64}), ("resnet18", {}))


def problem(name: str, options: dict, batch_size: int, channels: int, device: torch.device, size: int = 32):
    """An untrained model with 100 classes and a random batch on ``device``: (model, images, labels)."""
    model = build_model(name, num_classes=100, in_channels=channels, image_size=(size, size), **options).to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, channels, size, size, generator=generator).to(device)
    labels = torch.randint(0, 100, (batch_size,), generator=generator).to(device)
    return model, images, labels


def attack(model, images, labels, steps: int, device: torch.device, **settings) -> Inversion:
    """The benchmarked attack on the client update of (images, labels)."""
    update = client_update(model, images, labels)
    channels = images.shape[1]
    return Inversion(
        model, update, plan_labels("oracle", update, model, true_labels=labels),
        AttackSettings(max_steps=steps, checkpoint_every=0, **settings),
        bounds=(torch.full((1, channels, 1, 1), -3.0), torch.full((1, channels, 1, 1), 3.0)), priors={"tv": 1e-4},
        device=device,
    )


def restarts_table(restarts: int, batch_size: int, steps: int, device: torch.device) -> None:
    """Milliseconds per step of all R restarts, one after another and batched, and their ratio."""
    print(f"\n{restarts} restarts, {steps + 2} steps each, ms per step of all restarts:\n")
    print("| model | K | sequential (ms) | batched (ms) | sequential / batched | peak memory batched (MiB) |")
    print("|---|---|---|---|---|---|")
    cases = [(name, options, batch_size, 3, 32) for name, options in MODELS]
    cases.append(("fcn", {"depth": 3, "width": 300}, 50, 1, 28))  # the paper's FCN-3 on MNIST, K=50
    for name, options, k, channels, size in cases:
        model, images, labels = problem(name, options, k, channels, device, size)
        timings = {}
        for mode in ("never", "always"):
            run = attack(model, images, labels, steps + 2, device, restarts=restarts, batch_restarts=mode,
                         span="never")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            result = run.run(progress=False)
            timings[mode] = 1e3 * result.seconds / (result.steps / restarts)
        print(f"| {name} | {k} | {timings['never']:.1f} | {timings['always']:.1f} | "
              f"{timings['never'] / timings['always']:.2f}x | {peak_memory_mib(device):,.0f} |")


if __name__ == "__main__":
    main()
