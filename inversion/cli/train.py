"""Train a zoo model on real images: checkpoints at chosen epochs, a log of train and held-out accuracy.

    python scripts/train.py [--config configs/train/default.yaml] [--resume] [key=value | group=name ...]

Splits the data source's images (seeded) into training and held-out images, trains the model with SGD
or Adam on the CPU and writes into ``out`` (default runs/train/default): ``epoch_EEE.pt`` (the model's
state_dict after the chosen epochs; 000 is the untrained model; load with ``model.weights=``),
``train_log.json`` (config, data source, per-epoch train and held-out accuracy, checkpoint sha256s and
the image indices trained on and held out), ``resume.pt`` and ``config.yaml``. --resume continues from
the last finished epoch (bit-identically; train.epochs may be raised); Ctrl-C stops after saving it.
"""
from . import config_parser, run_cli
from ..config import load_config
from ..train import TrainConfig, run_training


def main() -> None:
    parser = config_parser(__doc__.splitlines()[0], "configs/train/default.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt")
    args = parser.parse_intermixed_args()
    cfg = load_config(TrainConfig, args.config, args.overrides)
    record = run_training(cfg, resume=args.resume)
    print(f"trained {record.model['name']} on {len(record.train_indices):,} images, "
          f"{len(record.held_out_indices):,} held out, from {record.data_source}")
    for row in record.history:
        print(_epoch_line(row))
    out = record.log_path.parent
    files = ", ".join(path.name for _, path in sorted(record.checkpoints.items()))
    print(f"checkpoints in {out}/: {files}; log {record.log_path}")


def _epoch_line(row: dict) -> str:
    """One epoch of the log as a line: train loss and accuracy (not for epoch 0), held-out accuracy, time."""
    trained = "" if row["train_loss"] is None else \
        f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}, "
    held_out = "no held-out images" if row["held_out_accuracy"] is None else \
        f"held-out acc {row['held_out_accuracy']:.4f}"
    return f"epoch {row['epoch']:3d}: {trained}{held_out} ({row['seconds']:.2f} s)"


def run() -> None:
    """Console-script entry point: errors become one line and exit code 2."""
    run_cli(main)
