"""Train a zoo model on real images: checkpoints at chosen epochs, a log of train and held-out accuracy.

    python scripts/train.py [--config configs/train/default.yaml] [--resume] [key=value | group=name ...]
    python scripts/train.py --sweep configs/train/sweeps/fcn3_mnist_seeds.yaml [--executor {in-process,ray}]
                            [--address ADDR] [--num-cpus N] [--gpus-per-run G] [--cpus-per-run N] [key=value ...]

Splits the data source's images (seeded) into training and held-out images, trains the model with SGD
or Adam on the CPU and writes into ``out`` (default runs/train/default): ``epoch_EEE.pt`` (the model's
state_dict after the chosen epochs; 000 is the untrained model; load with ``model.weights=``),
``train_log.json`` (config, data source, per-epoch train and held-out accuracy, checkpoint sha256s and
the image indices trained on and held out), ``resume.pt`` and ``config.yaml``. --resume continues from
the last finished epoch (bit-identically; train.epochs may be raised); Ctrl-C stops after saving it.

``--sweep FILE`` trains every experiment of a training sweep once per seed (the overrides apply to the
sweep file: ``seeds=[0,1]``, ``out=...``), each into ``out/<experiment>/seed<S>/``, and writes
training.json, training.md (held-out accuracy per run and mean ± std over seeds), training.png and
runs.jsonl (the ledger: re-running skips finished runs and continues interrupted ones from their
resume.pt). ``--executor ray`` runs one Ray task per run; the results are the same.
"""

from inversion.cli import config_parser, run_cli
from inversion.config import ConfigError, TrainConfig, TrainSweepConfig, load_config
from inversion.experiments.train import run_training
from inversion.experiments.train_sweep import OUTPUTS, run_train_sweep
from inversion.sweep.options import add_executor_options, executor_from_args, report

DEFAULT_CONFIG = "configs/train/default.yaml"


def main() -> None:
    parser = config_parser(__doc__.splitlines()[0], DEFAULT_CONFIG)
    parser.set_defaults(config=None)  # DEFAULT_CONFIG unless given: --sweep refuses a given --config
    parser.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt")
    parser.add_argument(
        "--sweep",
        metavar="FILE",
        help="a training sweep (configs/train/sweeps/*.yaml): experiments x seeds; the overrides apply to it",
    )
    add_executor_options(parser)
    args = parser.parse_intermixed_args()
    if args.sweep is not None:
        _sweep(args)
    else:
        _train(args)


def _train(args) -> None:
    """One training run, as ``--config`` and the overrides say."""
    if args.executor != "in-process":
        raise ConfigError(f"--executor {args.executor}: only with --sweep")
    executor_from_args(args)  # refuses the Ray options without --executor ray
    cfg = load_config(TrainConfig, args.config or DEFAULT_CONFIG, args.overrides)
    record = run_training(cfg, resume=args.resume)
    print(
        f"trained {record.model['name']} on {len(record.train_indices):,} images, "
        f"{len(record.held_out_indices):,} held out, from {record.data_source}"
    )
    for row in record.history:
        print(_epoch_line(row))
    out = record.log_path.parent
    files = ", ".join(path.name for _, path in sorted(record.checkpoints.items()))
    print(f"checkpoints in {out}/: {files}; log {record.log_path}")


def _sweep(args) -> None:
    """A training sweep, as the ``--sweep`` file and the overrides say."""
    given = [flag for flag, value in (("--config", args.config), ("--resume", args.resume)) if value]
    if given:
        raise ConfigError(
            f"--sweep with {' and '.join(given)}: a sweep file names its configs, and a sweep resumes by itself"
        )
    executor = executor_from_args(args)
    done = run_train_sweep(load_config(TrainSweepConfig, args.sweep, args.overrides), executor=executor)
    report(
        done,
        "training.md",
        f"{', '.join(OUTPUTS)}, runs.jsonl; each run's checkpoints in {done['out']}/<experiment>/seed<S>/",
    )


def _epoch_line(row: dict) -> str:
    """One epoch of the log as a line: train loss and accuracy (not for epoch 0), held-out accuracy, time."""
    trained = (
        "" if row["train_loss"] is None else f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}, "
    )
    held_out = (
        "no held-out images" if row["held_out_accuracy"] is None else f"held-out acc {row['held_out_accuracy']:.4f}"
    )
    return f"epoch {row['epoch']:3d}: {trained}{held_out} ({row['seconds']:.2f} s)"


def run() -> None:
    """Console-script entry point: errors become one line and exit code 2."""
    run_cli(main)
