"""Measure disaggregation (exact samples from the linear layers' gradients) on trained FCN-3 MNIST checkpoints:
FedSGD gradients, FedAvg deltas of one local epoch, and FedSGD through DP-SGD.

    python scripts/bench_disaggregation.py [--epochs 5] [--batch-size 24] [--seeds 0]
                                           [--updates fedsgd fedavg:6:0.1] [--clip 1.0]
                                           [--checkpoints runs/train/fcn3_mnist]

Each update is simulated by ``inversion.simulate`` on the checkpoint ``epoch_NNN.pt`` with the images it trained on
(``client.images=trained``): ``fedsgd``; ``fedavg:B:LR[:MOMENTUM]``, one local epoch of K/B steps of local batch
size B at learning rate LR (torch SGD, in order); ``dp:SIGMA``, FedSGD through DP-SGD (Opacus) with noise
multiplier SIGMA and clipping norm ``--clip`` (its noise seeded by the client seed). Columns: ``visible`` (the
first layer's rank above its noise floor), ``found`` (verified samples), ``exact`` (true images recovered with
every pixel within 1e-3 of the [0, 1] range), ``labels`` (label accuracy of the verified samples, each matched to
the nearest true image; over all seeds in the mean row), ``LnAcc`` (of the label method ``disaggregation``:
verified labels plus iLRG on the rest; iLRG's warnings are silenced), ``s`` (wall seconds of ``disaggregate``),
``stop`` (:data:`~inversion.attack.disaggregation.STOPS`' key).
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
import argparse
import warnings
from pathlib import Path

import numpy as np
import torch

import inversion as gl
from inversion.attack.disaggregation import STOPS, disaggregate
from inversion.restore import restore_from_update
from label_restore import counts_from_labels, label_metrics

EXACT = 1e-3
"""A recovered image is exact when every pixel is within this of the true one, in [0, 1] pixel units."""


def overrides(update: str, clip: float, batch_size: int, seed: int) -> list[str]:
    """The client overrides of one update spec (see the module docstring)."""
    kind, *values = update.split(":")
    if kind == "fedsgd" and not values:
        return []
    if kind == "fedavg" and len(values) in (2, 3):
        local_batch, lr = int(values[0]), float(values[1])
        steps = -(-batch_size // local_batch)  # one local epoch
        momentum = [f"client.local_momentum={values[2]}"] if len(values) == 3 else []
        return [
            "client.kind=fedavg",
            f"client.local_steps={steps}",
            f"client.local_batch_size={local_batch}",
            f"client.local_lr={lr}",
            *momentum,
        ]
    if kind == "dp" and len(values) == 1:
        return [
            f"client.dp_noise_multiplier={float(values[0])}",
            f"client.dp_max_grad_norm={clip}",
            f"client.dp_noise_seed={seed}",
        ]
    raise SystemExit(f"unknown update {update!r}: use fedsgd, fedavg:B:LR[:MOMENTUM] or dp:SIGMA")


def measure(run) -> dict:
    """One update's figures (see the module docstring)."""
    found = disaggregate(run.update, run.model)
    truth = run.private.images.flatten(1).double().numpy()
    true_labels = run.private.labels.numpy()
    std = np.asarray(run.update.meta.std).repeat(truth.shape[1] // len(run.update.meta.std))
    exact: set[int] = set()
    right = 0
    for point, label in zip(found.inputs, found.labels, strict=True):
        error = np.abs(truth - point) * std  # in [0, 1] pixel units
        nearest = int(error.max(axis=1).argmin())
        right += int(label == true_labels[nearest])
        if error[nearest].max() < EXACT:
            exact.add(nearest)
    with warnings.catch_warnings():  # iLRG's warnings on the residual of faint samples: LnAcc tells
        warnings.simplefilter("ignore")
        restored = restore_from_update("disaggregation", run.update, run.model)
    classes = len(restored.counts)
    scores = label_metrics(restored.counts, counts_from_labels(true_labels, classes))
    stop = next((key for key, sentence in STOPS.items() if sentence == found.stopped), "?")
    return {
        "visible": found.visible,
        "found": found.found,
        "exact": len(exact),
        "right": right,
        "lnacc": scores["LnAcc"],
        "seconds": found.seconds,
        "stop": stop,
    }


def accuracy(rows: list[dict]) -> str:
    """The label accuracy of all the rows' verified samples, or "-" when none verified."""
    found = sum(row["found"] for row in rows)
    return f"{sum(row['right'] for row in rows) / found:.3f}" if found else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[5], help="checkpoint epochs (epoch_NNN.pt)")
    parser.add_argument("--batch-size", type=int, default=24, help="K")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="client seeds (one batch each)")
    parser.add_argument("--updates", nargs="+", default=["fedsgd", "fedavg:6:0.1"])
    parser.add_argument("--clip", type=float, default=1.0, help="DP-SGD clipping norm C")
    parser.add_argument("--checkpoints", type=Path, default=Path("runs/train/fcn3_mnist"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")  # Opacus's accountant, on ε
    k = args.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; exact: every pixel within {EXACT:g}")
    header = f"{'K':>3} {'epoch':>5} {'update':>16} {'seed':>4} {'visible':>7} {'found':>7} {'exact':>7} "
    print(header + f"{'labels':>6} {'LnAcc':>5} {'s':>6}  stop")
    for epoch in args.epochs:
        weights = args.checkpoints / f"epoch_{epoch:03d}.pt"
        for update in args.updates:
            rows = []
            for seed in args.seeds:
                run = gl.simulate(
                    "default",
                    f"model.weights={weights}",
                    "client.images=trained",
                    f"client.batch_size={k}",
                    f"client.seed={seed}",
                    "client.parameters=all",
                    *overrides(update, args.clip, k, seed),
                )
                row = measure(run)
                rows.append(row)
                print(
                    f"{k:>3} {epoch:>5} {update:>16} {seed:>4} {row['visible']:>7} {row['found']:>4}/{k:<2} "
                    f"{row['exact']:>4}/{k:<2} {accuracy([row]):>6} {row['lnacc']:>5.2f} {row['seconds']:>6.1f}  "
                    f"{row['stop']}"
                )
            if len(rows) > 1:
                mean = {key: float(np.mean([r[key] for r in rows])) for key in ("visible", "found", "exact", "seconds")}
                lnacc = float(np.mean([r["lnacc"] for r in rows]))
                print(
                    f"{k:>3} {epoch:>5} {update:>16} {'mean':>4} {mean['visible']:>7.1f} {mean['found']:>7.1f} "
                    f"{mean['exact']:>7.1f} {accuracy(rows):>6} {lnacc:>5.2f} {mean['seconds']:>6.1f}"
                )


if __name__ == "__main__":
    main()
