"""Training sweeps behind ``scripts/train.py --sweep``: experiments x seeds, each a :func:`run_training` run.

Every experiment (a ``configs/train/*.yaml`` config plus overrides) trains once per seed; a run sets both
``train.seed`` (the split into trained and held-out images, the per-epoch shuffles, torch's RNG while
training) and ``model.seed`` (the initial weights) to its seed, and trains into ``<out>/<name>/seed<S>/``
(its ``out``: checkpoints, ``train_log.json``, ``resume.pt``, ``config.yaml``). The sweep runs on
:mod:`inversion.sweep`: each run is keyed by its resolved training config (without ``out``) and its
experiment's name (which names its folder), so re-running the sweep skips the finished runs and retries the
failed ones. A run stopped mid-way (Ctrl-C, a killed process) is not in the ledger; the next sweep redoes it,
continuing from the last epoch its ``resume.pt`` holds, bit-identically (same thread count). A run folder
holding another training (the experiment's config changed since) is refused, and the run recorded as failed
with that error: move the folder aside or rename the experiment. The runs execute in this process or as Ray
tasks; ``training.json``, ``training.md`` and ``training.png`` are rebuilt from the ledger after every run.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from inversion.config import ConfigError, TrainConfig, TrainSweepConfig, load_config
from inversion.experiments.train import RESUME_NAME, run_training
from inversion.sweep import RecordSchema, Run, Sweep, execute
from inversion.sweep.executors import Executor
from inversion.utils.fileio import atomic_write, sha256_file
from inversion.utils.plotting import figure
from inversion.utils.records import as_record, record_digest

__all__ = ["OUTPUTS", "SCHEMA", "format_markdown", "run_train_sweep", "summarize"]

OUTPUTS = ("training.json", "training.md", "training.png")
"""The result files a sweep rebuilds in ``out`` from its ledger."""


def _plan(sweep: TrainSweepConfig) -> list[Run]:
    """Every run of the sweep (a resolved :class:`~inversion.config.TrainSweepConfig`), its training config
    composed from its experiment's file and overrides and resolved before any work.

    The payload is that config as a record, with ``<out>/<name>/seed<S>`` as its ``out``, and that folder
    relative to ``out``; the key does not depend on ``out``.
    """
    runs = []
    for experiment in sweep.experiments:
        for seed in sweep.seeds:
            folder = f"{experiment.name}/seed{seed}"
            try:
                run_cfg = load_config(
                    TrainConfig,
                    experiment.config,
                    [
                        *experiment.overrides,
                        f"train.seed={seed}",
                        f"model.seed={seed}",
                        f"out={Path(sweep.out) / folder}",
                    ],
                )
            except ConfigError as err:
                raise ConfigError(f"train sweep: experiment {experiment.name!r}: {err}") from None
            key = record_digest(run_cfg, ignore=("out",), experiment=experiment.name)[:16]
            description = {
                "experiment": experiment.name,
                "seed": seed,
                "dataset": str(run_cfg.data.name),
                "model": str(run_cfg.model.name),
            }
            payload = {"config": as_record(run_cfg), "folder": folder}
            runs.append(Run(key, description, payload, units=run_cfg.train.epochs))
    return runs


def _results_problem(record: dict) -> str | None:
    """Why a finished run's record lacks its results, or None (the rest is checked by the ledger)."""
    epochs, checkpoints = record.get("epochs"), record.get("checkpoints")
    if (
        not isinstance(epochs, list)
        or not epochs
        or not all(isinstance(row, dict) and "held_out_accuracy" in row for row in epochs)
    ):
        return "a finished run without its epochs"
    if not isinstance(checkpoints, list) or not all(
        isinstance(c, dict) and isinstance(c.get("file"), str) and isinstance(c.get("sha256"), str) for c in checkpoints
    ):
        return "a finished run without its checkpoints"
    bad = [name for name in ("seconds", "train_images", "held_out_images") if not _is_number(record.get(name))]
    return f"{', '.join(bad)} not a number" if bad else None


def _is_number(value: Any) -> bool:
    """A JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


SCHEMA = RecordSchema(
    fields={"experiment": str, "seed": int, "dataset": str, "model": str}, results_problem=_results_problem
)
"""What every ledger record holds besides its key and status, and what a finished one holds."""


def run_train_sweep(sweep: TrainSweepConfig, *, progress: bool = True, executor: Executor | None = None) -> dict:
    """Run (or resume) the sweep; write ``runs.jsonl``, ``training.json``, ``training.md``, ``training.png``.

    Every run's config is composed and resolved first, so a missing config file or a bad override fails at once
    (ConfigError) and writes nothing.

    Args:
        sweep: the resolved sweep config (:func:`inversion.config.load_config`).
        executor: where the runs execute (default: one after another in this process; see
            :func:`inversion.sweep.make_executor`). The results do not depend on it.

    Returns:
        ``{"runs": records in plan order, "ran": how many ran now, "skipped": how many were done,
        "out": the output folder}``.
    """
    plan = _plan(sweep)
    write = partial(_write_outputs, config=as_record(sweep), descriptions=[run.description for run in plan])
    engine_sweep = Sweep(
        plan=plan,
        worker=f"{__name__}:_train_run",
        schema=SCHEMA,
        write=write,
        outputs=OUTPUTS,
        name="training",
        unit="epoch",
        label=_label,
    )
    return execute(engine_sweep, sweep.out, executor=executor, progress=progress)


def _label(description: dict) -> str:
    return f"{description['experiment']} seed={description['seed']}"


def _train_run(payload: dict, advance: Callable[[int], None]) -> dict[str, Any]:
    """The sweep's worker: train ``payload["config"]`` into its ``out`` (continuing from its ``resume.pt`` if
    there is one); its record's results. ``advance(1)`` after each trained epoch."""
    cfg = load_config(TrainConfig, base=payload["config"])  # the plain record the plan handed over, typed again
    resume = (Path(cfg.out) / RESUME_NAME).is_file()
    record = run_training(cfg, resume=resume, progress=False, on_epoch=partial(_trained_epoch, advance))
    return {
        "epochs": record.history,
        "seconds": round(sum(row["seconds"] for row in record.history), 3),
        "checkpoints": [
            {"epoch": epoch, "file": f"{payload['folder']}/{path.name}", "sha256": sha256_file(path)}
            for epoch, path in sorted(record.checkpoints.items())
        ],
        "train_images": len(record.train_indices),
        "held_out_images": len(record.held_out_indices),
        "data_source": record.data_source,
    }


def _trained_epoch(advance: Callable[[int], None], row: dict[str, Any]) -> None:
    """Move the progress bar by one unit for each trained epoch (epoch 0 only evaluates the untrained model)."""
    if row["epoch"] > 0:
        advance(1)


def summarize(records: list[dict]) -> dict[str, dict[int, tuple[float, float, int]]]:
    """Per experiment and epoch, the held-out accuracy's mean, std and number of seeds (finished runs only)."""
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record["status"] == "ok":
            for row in record["epochs"]:
                if row["held_out_accuracy"] is not None:
                    values[record["experiment"]][row["epoch"]].append(row["held_out_accuracy"])
    return {
        experiment: {epoch: (float(np.mean(v)), float(np.std(v)), len(v)) for epoch, v in sorted(by_epoch.items())}
        for experiment, by_epoch in values.items()
    }


def _saved_epochs(records: list[dict]) -> list[int]:
    """The epochs any finished run saved a checkpoint of: the tables' columns."""
    return sorted({c["epoch"] for r in records if r["status"] == "ok" for c in r["checkpoints"]})


def _accuracy(record: dict, epoch: int) -> str:
    """A finished run's held-out accuracy after ``epoch`` as a table cell ("—" if not measured)."""
    row = next((row for row in record["epochs"] if row["epoch"] == epoch), None)
    return "—" if row is None or row["held_out_accuracy"] is None else f"{row['held_out_accuracy']:.3f}"


def format_markdown(records: list[dict], descriptions: list[dict]) -> str:
    """``training.md``: every run's held-out accuracy at the saved epochs, then mean ± std over seeds."""
    epochs = _saved_epochs(records)
    header = " | ".join(f"epoch {e}" for e in epochs)
    lines = [
        "# Training sweep",
        "",
        f"{sum(r['status'] == 'ok' for r in records)} runs finished, "
        f"{sum(r['status'] == 'failed' for r in records)} failed, {len(descriptions)} planned. "
        "Held-out accuracy after each saved epoch (0: the untrained model); each seed has its own split, "
        "initial weights and shuffles.",
        "",
        f"| experiment | seed | {header} | images trained on / held out | training time (s) |",
        _rule(len(epochs) + 4),
    ]
    for r in records:
        if r["status"] == "ok":
            cells = " | ".join(_accuracy(r, e) for e in epochs)
            lines.append(
                f"| {r['experiment']} | {r['seed']} | {cells} | {r['train_images']:,} / "
                f"{r['held_out_images']:,} | {r['seconds']:.1f} |"
            )
    summary = summarize(records)
    lines += [
        "",
        "Mean ± std over seeds:",
        "",
        f"| experiment | {header} | seeds | mean training time (s) |",
        _rule(len(epochs) + 3),
    ]
    for experiment in dict.fromkeys(d["experiment"] for d in descriptions):
        if experiment in summary:
            stats = summary[experiment]
            cells = " | ".join(f"{stats[e][0]:.3f} ± {stats[e][1]:.3f}" if e in stats else "—" for e in epochs)
            seconds = [r["seconds"] for r in records if r["status"] == "ok" and r["experiment"] == experiment]
            lines.append(f"| {experiment} | {cells} | {len(seconds)} | {np.mean(seconds):.1f} |")
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {r['experiment']} seed={r['seed']}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def _rule(columns: int) -> str:
    """A markdown table's header rule."""
    return "|---" * columns + "|"


def _write_outputs(out: Path, records: list[dict], *, config: dict, descriptions: list[dict]) -> None:
    """Rewrite training.json, training.md and training.png from the records (in plan order) of the planned runs."""
    with atomic_write(out / "training.json") as handle:
        handle.write((json.dumps({"config": config, "runs": records}, indent=1) + "\n").encode())
    with atomic_write(out / "training.md") as handle:
        handle.write(format_markdown(records, descriptions).encode())
    _plot(out / "training.png", summarize(records), list(dict.fromkeys(d["experiment"] for d in descriptions)))


def _plot(path: Path, summary: dict, experiments: list[str]) -> None:
    """Held-out accuracy against epoch, one line per experiment: the mean over seeds with a ±std band."""
    fig, ax = figure(1, 1, figsize=(5.5, 3.8))
    for experiment in experiments:
        stats = summary.get(experiment)
        if stats:
            epochs = np.array(list(stats))
            mean, std = (np.array([stats[e][i] for e in epochs]) for i in (0, 1))
            ax.plot(epochs, mean, marker=".", label=experiment)
            ax.fill_between(epochs, mean - std, mean + std, alpha=0.25)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy")
    ax.set_title("mean ± std over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=100)
