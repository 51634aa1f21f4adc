"""Known-versus-unknown-label ablation behind ``scripts/ablate.py``.

Every experiment (an inversion config plus overrides) runs for every batch size, seed and
label mode. For one experiment, batch size and seed, all modes see the same client batch
(client seed), the same DP-SGD noise if any (``client.dp_noise_seed``), the same model (model
seed) and the same dummy initialisation (attack seed), so the comparison between modes is paired.
The sweep runs on :mod:`inversion.sweep`: each run is keyed by its resolved config (without
``out``) in the ledger ``runs.jsonl``, so re-running the sweep skips the finished runs, retries
the failed ones and redoes a run stopped by Ctrl-C (see :mod:`inversion.sweep.engine` and
:mod:`inversion.sweep.ledger`). The runs execute in this process or as Ray tasks; the tables and
the figure are rebuilt from the ledger after every run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from inversion.config import AblateConfig, ConfigError, InvertConfig, load_config
from inversion.data import default_data_root
from inversion.evaluation import LPIPSMetric
from inversion.experiments.invert import run_inversion
from inversion.sweep import RecordSchema, Run, Sweep, execute
from inversion.sweep.executors import Executor
from inversion.utils.fileio import atomic_write
from inversion.utils.plotting import figure
from inversion.utils.records import as_record
from inversion.utils.rundir import check_out

__all__ = ["CSV_COLUMNS", "OUTPUTS", "run_ablation", "summarize"]

CSV_COLUMNS = (
    "dataset",
    "model",
    "K",
    "seed",
    "mode",
    "status",
    "label_LnAcc",
    "psnr",
    "ssim",
    "lpips",
    "steps",
    "seconds",
    "images",
    "error",
)
METRICS = ("psnr", "ssim", "lpips")
OUTPUTS = ("ablation.csv", "ablation.md", "ablation.png")
"""The result files a sweep rebuilds in ``out`` from its ledger."""


def _plan(sweep: AblateConfig) -> list[Run]:
    """Every run of the sweep (a resolved :class:`~inversion.config.AblateConfig`), its config composed from its
    experiment's file and overrides and resolved before any work; the payload is that config as a record, with the
    run's own folder ``out/runs/<key>`` as its ``out`` (the key does not depend on it)."""
    runs = []
    batch_sizes: list[int | None] = [*sweep.batch_sizes] or [None]  # None: each experiment's own
    for experiment in sweep.experiments:
        for k in batch_sizes:
            for seed in sweep.seeds:
                for mode in sweep.modes:
                    overrides = [
                        *experiment.overrides,
                        *([f"client.batch_size={k}"] if k else []),
                        f"client.seed={seed}",
                        f"client.dp_noise_seed={seed}",
                        f"model.seed={seed}",
                        f"attack.seed={seed}",
                        f"attack.labels={mode}",
                    ]
                    try:
                        run_cfg = load_config(InvertConfig, experiment.config, overrides)
                    except ConfigError as err:
                        raise ConfigError(f"ablation: experiment {experiment.name!r}: {err}") from None
                    resolved = {**as_record(run_cfg), "out": None}
                    key = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]
                    description = {
                        "experiment": experiment.name,
                        "dataset": str(run_cfg.data.name),
                        "model": str(run_cfg.model.name),
                        "K": run_cfg.client.batch_size,
                        "seed": seed,
                        "mode": mode,
                    }
                    runs.append(Run(key, description, {**resolved, "out": str(Path(sweep.out) / "runs" / key)}))
    return runs


def _results_problem(record: dict) -> str | None:
    """Why a finished run's record lacks its metrics or holds a score that is not a finite number (NaN: the
    attack diverged), or None (the rest is checked by the ledger)."""
    if not _is_number(record.get("psnr")):
        return f"a finished run without a finite PSNR ({record.get('psnr')!r})"
    bad = [
        name
        for name in ("ssim", "lpips", "label_LnAcc")
        if record.get(name) is not None and not _is_number(record[name])
    ]
    return f"{', '.join(bad)} not a finite number" if bad else None


def _is_number(value: Any) -> bool:
    """A finite JSON number (not a boolean, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


SCHEMA = RecordSchema(
    fields={"experiment": str, "dataset": str, "model": str, "K": int, "seed": int, "mode": str},
    results_problem=_results_problem,
)
"""What every ledger record holds besides its key and status, and what a finished one holds."""


def run_ablation(sweep: AblateConfig, *, progress: bool = True, executor: Executor | None = None) -> dict:
    """Run (or resume) the sweep; write ``runs.jsonl``, ``ablation.csv``, ``ablation.md``, ``ablation.png``.

    Args:
        sweep: the resolved sweep config (:func:`inversion.config.load_config`).
        executor: where the runs execute (default: one after another in this process; see
            :func:`inversion.sweep.make_executor`). The results do not depend on it.

    Returns:
        ``{"runs": records in sweep order, "ran": how many ran now, "skipped": how many were done,
        "out": the output folder}``.
    """
    check_out(sweep.out)  # before the plan, which composes every run's config (seconds for a large sweep)
    plan = _plan(sweep)
    write = partial(_write_outputs, descriptions=[run.description for run in plan], baseline=sweep.baseline)
    engine_sweep = Sweep(
        plan=plan,
        worker=f"{__name__}:_finished_run",
        schema=SCHEMA,
        write=write,
        outputs=OUTPUTS,
        name="ablation",
        label=_label,
    )
    return execute(engine_sweep, sweep.out, executor=executor, progress=progress)


def _label(description: dict) -> str:
    return f"{description['experiment']} K={description['K']} seed={description['seed']} {description['mode']}"


_LPIPS: dict[str, LPIPSMetric] = {}
"""The LPIPS metric of each data root, built once per process (the sweep's, or each Ray worker's)."""


def _finished_run(config: dict, advance: Callable[[int], None]) -> dict[str, Any]:
    """The sweep's worker: one inversion of ``config`` (a resolved config's record, ``out`` its run directory); its
    record's results.

    Raises KeyboardInterrupt if it was stopped early. ``advance``: unused (a run is one unit of the bar).
    """
    run = load_config(InvertConfig, base=config)  # the plain record the plan handed over, typed again
    root = str(run.data.root or default_data_root())
    if root not in _LPIPS:
        _LPIPS[root] = LPIPSMetric(root)
    results = run_inversion(run, progress=False, lpips_metric=_LPIPS[root]).results
    if results["attack"]["interrupted"]:  # Ctrl-C inside the attack: a best-so-far result, not a finished run
        raise KeyboardInterrupt(
            f"a run stopped after {results['attack']['steps']} steps: not recorded, the next sweep redoes it"
        )
    return {
        "label_LnAcc": results["label_metrics"]["LnAcc"],
        **{m: results["image_metrics"]["mean"][m] for m in METRICS},
        "per_image_psnr": [image["psnr"] for image in results["image_metrics"]["per_image"]],
        "steps": results["attack"]["steps"],
        "seconds": results["attack"]["seconds"],
        "images": results["private"]["data_source"],
    }


def summarize(records: list[dict], baseline: str) -> dict:
    """Mean ± std per (experiment, mode), and each mode's paired PSNR gain over ``baseline`` and gap to oracle."""
    table: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    by_pair: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in records:
        if r["status"] != "ok":
            continue
        for m in (*METRICS, "label_LnAcc"):
            if r.get(m) is not None:
                table[(r["experiment"], r["mode"])][m].append(float(r[m]))
        by_pair[(r["experiment"], r["K"], r["seed"])][r["mode"]] = float(r["psnr"])
    summary = {}
    for (experiment, mode), values in table.items():
        entry: dict[str, tuple[float, float, int] | None] = {
            m: (float(np.mean(v)), float(np.std(v)), len(v)) for m, v in values.items()
        }
        pairs = [pair for key, pair in by_pair.items() if key[0] == experiment and mode in pair]
        gains = [pair[mode] - pair[baseline] for pair in pairs if baseline in pair]
        gaps = [pair["oracle"] - pair[mode] for pair in pairs if "oracle" in pair]
        entry["gain_db"] = (float(np.mean(gains)), float(np.std(gains)), len(gains)) if gains else None
        entry["gap_to_oracle_db"] = (float(np.mean(gaps)), float(np.std(gaps)), len(gaps)) if gaps else None
        summary[(experiment, mode)] = entry
    return summary


def _fmt(value: tuple[float, float, int] | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def _write_outputs(out: Path, ordered: list[dict], *, descriptions: list[dict], baseline: str) -> None:
    """Rewrite ablation.csv, ablation.md and ablation.png from the records (in plan order) of the planned runs."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in ordered:
        writer.writerow({c: r.get(c, "") for c in CSV_COLUMNS})
    with atomic_write(out / "ablation.csv") as handle:
        handle.write(buffer.getvalue().encode())
    summary = summarize(ordered, baseline)
    modes = list(dict.fromkeys(r["mode"] for r in descriptions))
    experiments = list(dict.fromkeys((r["experiment"], r["dataset"]) for r in descriptions))
    lines = [
        "# Known-versus-unknown-label ablation",
        "",
        f"{sum(r['status'] == 'ok' for r in ordered)} runs complete, "
        f"{sum(r['status'] == 'failed' for r in ordered)} failed, {len(descriptions)} planned. "
        f"Mean ± std over seeds and all images (not a best-image subset). Gain: paired PSNR difference "
        f"to `{baseline}` on the same batch and initialisation; gap: `oracle` minus the mode.",
        "",
    ]
    for experiment, dataset in experiments:
        sources = sorted({r["images"] for r in ordered if r["experiment"] == experiment and r.get("images")})
        lines += [
            f"## {experiment} ({dataset})",
            "",
            f"Images: {'; '.join(sources) or 'n/a'}",
            "",
            f"| mode | label LnAcc | PSNR (dB) | SSIM | LPIPS | gain over {baseline} (dB) | gap to oracle (dB) "
            "| runs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for mode in modes:
            e = summary.get((experiment, mode))
            if e is None:
                continue
            lines.append(
                f"| {mode} | {_fmt(e.get('label_LnAcc'), 3)} | {_fmt(e.get('psnr'))} | "
                f"{_fmt(e.get('ssim'), 3)} | {_fmt(e.get('lpips'), 3)} | {_fmt(e['gain_db'])} | "
                f"{_fmt(e['gap_to_oracle_db'])} | {e['psnr'][2]} |"
            )
        lines.append("")
    failed = [r for r in ordered if r["status"] == "failed"]
    if failed:
        lines += (
            ["## Failed runs", ""]
            + [f"- {r['experiment']} K={r['K']} seed={r['seed']} {r['mode']}: {r['error']}" for r in failed]
            + [""]
        )
    with atomic_write(out / "ablation.md") as handle:
        handle.write("\n".join(lines).encode())
    _plot(out / "ablation.png", summary, [name for name, _ in experiments], modes)


def _plot(path: Path, summary: dict, experiments: list[str], modes: list[str]) -> None:
    fig, axes = figure(1, 3, figsize=(4.2 * 3, 3.6))
    width = 0.8 / max(len(experiments), 1)
    for ax, metric, label in zip(axes, METRICS, ("PSNR (dB) ↑", "SSIM ↑", "LPIPS ↓")):
        for d, experiment in enumerate(experiments):
            means = [summary.get((experiment, m), {}).get(metric, (np.nan, 0, 0))[0] for m in modes]
            stds = [summary.get((experiment, m), {}).get(metric, (0, 0, 0))[1] for m in modes]
            ax.bar(np.arange(len(modes)) + d * width, means, width, yerr=stds, capsize=3, label=experiment)
        ax.set_xticks(np.arange(len(modes)) + width * (len(experiments) - 1) / 2)
        ax.set_xticklabels(modes, rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=100)
