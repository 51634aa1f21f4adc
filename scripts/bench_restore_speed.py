"""Time label restoration against the client's own gradient computation (issue targets: iLRG at
C=1000, M=2048 under 50 ms, and under 5% of the client's gradient computation for the same case; aux at
C=1000, M=2048 with 10,000 auxiliary samples under 100 ms beyond the auxiliary forward pass).

    python scripts/bench_restore_speed.py [--repeats 15] [--batch-size 64] [--solvers auto,gelsy,pinv]
                                          [--aux-size 10000]

Restoration is timed on synthetic final layers (``label_restore.benchmark``): ``random`` gradients, and
``batch``, the exact mean-CE gradients of K random ReLU embeddings, whose restored counts are also scored.
``aux`` is timed on ``label_restore.benchmark.aux_layer`` (class-prototype embeddings) with its softmax
outputs on N auxiliary samples given; the forward pass that produces them (the final layer) is timed apart.
``pinv`` is the plain Moore-Penrose route of the paper's released code (vectorised). The client side is an
untrained CIFAR-style ResNet-50 with 1000 classes (M = 2048) on K random 32x32 images: the full FedSGD
gradient, and the final-layer-only gradient that label restoration needs.
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
import argparse
from functools import partial

import torch

from inversion.fl import client_gradients, final_layer_client_gradients
from inversion.models import build_model
from label_restore import counts_from_labels, label_metrics, restore_labels
from label_restore.benchmark import aux_layer, batch_layer, random_layer, time_call


def restoration(args) -> float:
    """Print restoration timings; return iLRG's median at C=1000, M=2048 (default solver, batch layer)."""
    k, headline = args.batch_size, float("nan")
    for c, m in ((1000, 2048), (100, 84)):
        layers = {"random": random_layer(c, m), "batch": batch_layer(c, m, k)}
        for kind, layer in layers.items():
            gw, gb, w, b = layer[:4]
            for solver in args.solvers.split(","):
                call = partial(restore_labels, "ilrg", gw, gb, w, b, k, solver=solver)
                repeats = max(3, args.repeats // 3) if solver in ("pinv", "gelsd") else args.repeats
                median, best = time_call(call, repeats=repeats)
                note = f"solver ran: {call().details['solver']}"
                if kind == "batch":
                    scores = label_metrics(call().raw_counts, counts_from_labels(layer[4], c))
                    note += f", LnAcc {scores['LnAcc']:.3f}"
                if (c, kind, solver) == (1000, "batch", "auto"):
                    headline = median
                print(
                    f"ilrg  C={c:4d} M={m:4d} K={k} {kind:6s} solver={solver:5s} "
                    f"median {median:8.2f} ms  min {best:8.2f} ms  ({note})"
                )
        gw, gb, w, b = layers["batch"][:4]
        for name in ("idlg", "gi", "llg", "bias_corrected"):
            median, best = time_call(partial(restore_labels, name, gw, gb, w, b, k), repeats=args.repeats)
            print(f"{name:14s} C={c:4d} M={m:4d} K={k} median {median:8.2f} ms  min {best:8.2f} ms")
    return headline


def auxiliary(args) -> float:
    """Print aux's timings at C=1000, M=2048 with N auxiliary samples; return its median (ms)."""
    k, n = args.batch_size, args.aux_size
    layer = aux_layer(1000, 2048, k, n)

    def forward():
        return torch.softmax(layer["aux_embeddings"] @ layer["weight"].T + layer["bias"], dim=1)

    probs = forward()
    forward_ms, _ = time_call(forward, repeats=max(3, args.repeats // 3))

    def call():
        return restore_labels(
            "aux", grad_bias=layer["grad_bias"], batch_size=k, aux_probs=probs, aux_labels=layer["aux_labels"]
        )

    median, best = time_call(call, repeats=args.repeats)
    result = call()
    scores = label_metrics(result.raw_counts, counts_from_labels(layer["labels"], 1000))
    print(
        f"aux   C=1000 M=2048 K={k} N={n} median {median:8.2f} ms  min {best:8.2f} ms  (solver ran: "
        f"{result.details['solver']}, LnAcc {scores['LnAcc']:.3f}); the auxiliary forward pass (final layer "
        f"only) {forward_ms:.1f} ms"
    )
    return median


def client(args) -> tuple[float, float]:
    """Median seconds of the client's full and final-layer-only gradients (ResNet-50, 1000 classes)."""
    k = args.batch_size
    model = build_model("resnet50", num_classes=1000, in_channels=3, image_size=(32, 32))
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(k, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 1000, (k,), generator=generator)
    full, _ = time_call(lambda: client_gradients(model, images, labels), repeats=3, warmup=1)
    head, _ = time_call(lambda: final_layer_client_gradients(model, images, labels), repeats=3, warmup=1)
    print(
        f"client ResNet-50 (1000 classes, 32x32) K={k}: full FedSGD gradient median {full / 1e3:.2f} s, "
        f"final layer only {head / 1e3:.2f} s"
    )
    return full / 1e3, head / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--solvers", default="auto,gelsy,pinv")
    parser.add_argument("--aux-size", type=int, default=10_000, help="N, auxiliary samples for aux")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ilrg_ms = restoration(args)
    auxiliary(args)
    full_s, head_s = client(args)
    print(
        f"iLRG (C=1000, M=2048) takes {ilrg_ms:.1f} ms = {100 * ilrg_ms / 1e3 / full_s:.2f}% of the client's "
        f"full gradient computation and {100 * ilrg_ms / 1e3 / head_s:.2f}% of its final-layer-only one "
        f"(K={args.batch_size})"
    )


if __name__ == "__main__":
    main()
