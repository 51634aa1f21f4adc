"""Tiny sweep files shared by the tests of the ablation, the training sweeps and the sweep engine."""

import json
from pathlib import Path

STEPS = 4
"""Attack steps of an ablation run: a fraction of a second."""

TINY = [
    "model.width=32",
    "train.max_images=300",
    "train.batch_size=32",
    "train.epochs=2",
    "train.checkpoint_epochs=[0,1,2]",
]  # 240 digits trained on, 60 held out; a fraction of a second a run
EXPERIMENTS = {"sgd": [], "adam": ["train.optimizer=adam", "train.lr=0.001"]}


def ablation_yaml(tmp_path, data_root, modes, *, seeds=(0, 1), broken=True, extra=""):
    """A tiny sweep (K=2, 4 steps): a working MNIST experiment (with the override ``extra``, if given) and, with
    ``broken``, one whose runs all fail."""
    path = tmp_path / "ablate.yaml"
    common = (
        f"[data.root={data_root}, data.download=false, model.width=16, attack.max_steps={STEPS}, "
        f"attack.checkpoint_every=0{', ' + extra if extra else ''}]"
    )
    path.write_text(
        "experiments:\n"
        f"  - {{name: mnist_small, config: configs/invert/default.yaml, overrides: {common}}}\n"
        + (
            f"  - {{name: broken, config: configs/invert/default.yaml, overrides: {common[:-1]}, priors.bn=0.1]}}\n"
            if broken
            else ""
        )
        + f"batch_sizes: [2]\nseeds: [{', '.join(map(str, seeds))}]\nmodes: [{', '.join(modes)}]\n"
        f"baseline: shared\nout: {tmp_path / 'out'}\n"
    )
    return path


def train_sweep_yaml(
    folder: Path,
    data_root: Path,
    experiments: dict = EXPERIMENTS,
    seeds=(0, 1),
    *,
    config: str = "configs/train/default.yaml",
) -> Path:
    """A sweep file in ``folder`` (out: ``folder/out``): each experiment the tiny training plus its overrides."""
    path = folder / "sweep.yaml"
    common = [f"data.root={data_root}", "data.download=false", *TINY]
    lines = [
        f"  - {{name: {name}, config: {config}, overrides: {json.dumps(common + overrides)}}}"
        for name, overrides in experiments.items()
    ]
    path.write_text(
        "experiments:\n" + "\n".join(lines) + f"\nseeds: [{', '.join(map(str, seeds))}]\nout: {folder / 'out'}\n"
    )
    return path


def without_timings(records: list[dict]) -> list[dict]:
    """The records without what depends on the machine's speed (seconds) or on where they ran (tracebacks)."""
    return [
        {
            k: ([{**row, "seconds": None} for row in v] if k == "epochs" else v)
            for k, v in r.items()
            if k not in ("seconds", "traceback")
        }
        for r in records
    ]
