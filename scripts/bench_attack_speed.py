"""Time one attack step against one client forward+backward on the same model and batch
(issue target: a step costs at most 3x the client's computation), with steps per second and peak memory.

    python scripts/bench_attack_speed.py [--batch-size 8] [--steps 20] [--min-seconds 2] [--device auto|cpu|cuda]
                                         [--restarts R]

A step's time is that of a warm attack: the time of a run of W + N steps less that of a run of W steps
(W = 3), so that the run's set-up and first steps cancel; N is ``--steps``, or more where a model's steps
are fast, so that the timed steps last at least ``--min-seconds``. The client's time is the median of 20
forward+backward passes after 3 more.

Untrained LeNet-5, ConvNet (width 64) and ResNet-18 with 100 classes on random 3x32x32 images; the attack
uses oracle labels, cosine matching, signed Adam, box constraints and a TV prior, as the shipped configs.
With ``--restarts R`` (R > 1) a second table times R restarts run one after another against the same R
run as one batched problem (``attack.batch_restarts``), per step of all R restarts, on these models and on
the paper's FCN-3 (MNIST-sized, K=50).
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
import argparse
import math
import platform
import resource
from functools import partial

import torch

from inversion.attack import AttackSettings, Inversion, plan_labels
from inversion.attack.settings import resolve_device
from inversion.fl import client_gradients, client_update
from inversion.models import build_model
from label_restore.benchmark import time_call


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    scale = 2**20 if platform.system() == "Darwin" else 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model (at least)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time at least this long per model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--restarts", type=int, default=1, help="R > 1: also time R sequential vs batched restarts")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, K={args.batch_size}")
    print("| model | client fwd+bwd (ms) | attack step (ms) | ratio | steps/s | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for name, options in MODELS:
        model, images, labels = problem(name, options, args.batch_size, 3, device)
        client_ms, _ = time_call(partial(client_gradients, model, images, labels), repeats=20, warmup=3)
        step_ms = warm_step_ms(model, images, labels, args.steps, args.min_seconds, device)
        print(
            f"| {name} | {client_ms:.1f} | {step_ms:.1f} | {step_ms / client_ms:.2f}x | {1e3 / step_ms:.1f} | "
            f"{peak_memory_mib(device):,.0f} |"
        )
    if args.restarts > 1:
        restarts_table(args.restarts, args.batch_size, args.steps, args.min_seconds, device)


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
        model,
        update,
        plan_labels("oracle", update, model, true_labels=labels),
        AttackSettings(max_steps=steps, checkpoint_every=0, **settings),
        bounds=(torch.full((1, channels, 1, 1), -3.0), torch.full((1, channels, 1, 1), 3.0)),
        priors={"tv": 1e-4},
        device=device,
    )


WARMUP = 3
"""Steps of the run whose time is subtracted (set-up, first steps)."""


def warm_step_ms(model, images, labels, steps: int, min_seconds: float, device: torch.device, **settings) -> float:
    """Milliseconds per step (of all restarts) of a warm attack: a run of WARMUP + N steps less a run of WARMUP.

    N is ``steps``, or more, so that the N steps last about ``min_seconds`` at the warm-up's pace.
    """
    restarts = settings.get("restarts", 1)
    short = attack(model, images, labels, WARMUP, device, **settings).run(progress=False)
    pace = short.seconds / (short.steps / restarts)
    timed = max(steps, math.ceil(min_seconds / pace))
    long = attack(model, images, labels, WARMUP + timed, device, **settings).run(progress=False)
    return 1e3 * (long.seconds - short.seconds) / timed


def restarts_table(restarts: int, batch_size: int, steps: int, min_seconds: float, device: torch.device) -> None:
    """Milliseconds per step of all R restarts, one after another and batched, and their ratio."""
    print(f"\n{restarts} restarts, ms per warm step of all restarts:\n")
    print("| model | K | sequential (ms) | batched (ms) | sequential / batched | peak memory batched (MiB) |")
    print("|---|---|---|---|---|---|")
    cases = [(name, options, batch_size, 3, 32) for name, options in MODELS]
    cases.append(("fcn", {"depth": 3, "width": 300}, 50, 1, 28))  # the paper's FCN-3 on MNIST, K=50
    for name, options, k, channels, size in cases:
        model, images, labels = problem(name, options, k, channels, device, size)
        timings = {}
        for mode in ("never", "always"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            timings[mode] = warm_step_ms(
                model, images, labels, steps, min_seconds, device, restarts=restarts, batch_restarts=mode, span="never"
            )
        print(
            f"| {name} | {k} | {timings['never']:.1f} | {timings['always']:.1f} | "
            f"{timings['never'] / timings['always']:.2f}x | {peak_memory_mib(device):,.0f} |"
        )


if __name__ == "__main__":
    main()
