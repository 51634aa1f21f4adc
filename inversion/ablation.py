"""Known-versus-unknown-label ablation behind ``scripts/ablate.py``.

Every experiment (an inversion config plus overrides) runs for every batch size, seed and
label mode. For one experiment, batch size and seed, all modes see the same client batch
(client seed), the same model (model seed) and the same dummy initialisation (attack seed),
so the comparison between modes is paired. Each finished or failed run is appended to
``runs.jsonl`` under a key derived from its resolved config: re-running the sweep skips
the finished ones, so an interrupted sweep resumes without redoing or losing work. A run
stopped by Ctrl-C is not recorded (the sweep stops; a re-run redoes it), and a torn or
corrupt ledger line is reported and skipped (its run is redone). The tables and the figure
are rebuilt from ``runs.jsonl`` after every run.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import traceback
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List

import numpy as np
from omegaconf import DictConfig
from tqdm.auto import tqdm

from .config import ConfigError, InvertConfig, LabelMode, load_config, to_dict
from .data import default_data_root
from .data.fileio import atomic_write
from .evaluation import LPIPSMetric
from .pipeline import run_inversion
from .rundir import run_folder
from .visualize import figure


__all__ = ["AblateConfig", "Experiment", "run_ablation", "summarize", "CSV_COLUMNS"]

log = logging.getLogger("inversion.ablation")

CSV_COLUMNS = ("dataset", "model", "K", "seed", "mode", "status", "label_LnAcc", "psnr", "ssim", "lpips",
               "steps", "seconds", "images", "error")
METRICS = ("psnr", "ssim", "lpips")
RECORD_FIELDS = {"key": str, "status": str, "experiment": str, "dataset": str, "model": str, "K": int, "seed": int,
                 "mode": str}  # every ledger record's fields and their types


@dataclass
class Experiment:
    """One inversion setting of the sweep."""

    name: str = "experiment"
    config: str = "configs/invert/default.yaml"  # relative to the repository, or absolute
    overrides: List[str] = field(default_factory=list)


@dataclass
class AblateConfig:
    """``scripts/ablate.py``: experiments x batch sizes x seeds x label modes."""

    experiments: List[Experiment] = field(default_factory=lambda: [Experiment()])
    batch_sizes: List[int] = field(default_factory=list)  # empty: each experiment's own client.batch_size
    seeds: List[int] = field(default_factory=lambda: [0])
    modes: List[LabelMode] = field(default_factory=lambda: [LabelMode[m] for m in ("oracle", "ilrg", "joint", "shared")])
    baseline: str = "shared"  # the paired gain of every mode is reported over this one
    out: str = "runs/ablate"


def _plan(cfg: DictConfig) -> list[tuple[str, dict[str, Any], DictConfig]]:
    """Every run of the sweep as (key, description, validated InvertConfig), built before any work."""
    sweep = to_dict(cfg)
    if not sweep["experiments"] or not sweep["modes"] or not sweep["seeds"]:
        raise ConfigError("ablation: experiments, seeds and modes must each list at least one entry")
    if sweep["baseline"] not in sweep["modes"]:
        raise ConfigError(f"ablation.baseline {sweep['baseline']!r} is not among the modes {sweep['modes']}")
    runs = []
    for experiment in sweep["experiments"]:
        for k in sweep["batch_sizes"] or [None]:
            for seed in sweep["seeds"]:
                for mode in sweep["modes"]:
                    overrides = [*experiment["overrides"], *([f"client.batch_size={k}"] if k else []),
                                 f"client.seed={seed}", f"model.seed={seed}", f"attack.seed={seed}",
                                 f"attack.labels={mode}"]
                    run_cfg = load_config(InvertConfig, experiment["config"], overrides)
                    resolved = {**to_dict(run_cfg), "out": None}
                    key = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:16]
                    description = {"experiment": experiment["name"], "dataset": resolved["data"]["name"],
                                   "model": resolved["model"]["name"], "K": resolved["client"]["batch_size"],
                                   "seed": seed, "mode": mode}
                    runs.append((key, description, run_cfg))
    return runs


def _load_records(path: Path) -> dict[str, dict]:
    """The run records of the ledger by key (a later line wins); bad lines are logged and skipped."""
    records = {}
    if path.is_file():
        for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as err:  # a torn write, or bytes that are not JSON
                problem = f"invalid JSON: {err}"
            else:
                problem = _record_problem(record)
            if problem:
                log.warning("%s:%d: not a run record (%s); skipped", path, number, problem)
            else:
                records[record["key"]] = record
    return records


def _record_problem(record: Any) -> str | None:
    """Why a parsed ledger line is not a run record this module wrote, or None when it is one."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    wrong = [name for name, kind in RECORD_FIELDS.items() if not isinstance(record.get(name), kind)]
    if wrong:
        return f"missing or mistyped: {', '.join(wrong)}"
    if record["status"] == "failed":
        return None if isinstance(record.get("error"), str) else "a failed run without its error"
    if record["status"] != "ok":
        return f"status {record['status']!r} is neither 'ok' nor 'failed'"
    if not _is_number(record.get("psnr")):
        return "a finished run without its PSNR"
    bad = [name for name in ("ssim", "lpips", "label_LnAcc") if record.get(name) is not None
           and not _is_number(record[name])]
    return f"{', '.join(bad)} not a number" if bad else None


def _is_number(value: Any) -> bool:
    """A JSON number (not a boolean)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _append(path: Path, record: dict) -> None:
    """Append one record as one line, on a line of its own even after a torn last line."""
    line = json.dumps(record) + "\n"
    with open(path, "a+b") as handle:  # writes go to the end wherever the read position is
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":  # a write cut short: do not glue this record onto it
                line = "\n" + line
        handle.write(line.encode())
        handle.flush()


def run_ablation(config_path: str | Path | None, overrides: list[str] = (), *, progress: bool = True,
                 lpips_metric: LPIPSMetric | None = None) -> dict:
    """Run (or resume) the sweep; write ``runs.jsonl``, ``ablation.csv``, ``ablation.md``, ``ablation.png``.

    Returns:
        ``{"runs": records in sweep order, "ran": how many ran now, "skipped": how many were done,
        "out": the output folder}``.
    """
    cfg = load_config(AblateConfig, config_path, overrides)
    plan = _plan(cfg)
    with run_folder(cfg.out, (), keep=True) as out:  # checked and locked; the ledger is resumed, not moved
        return _sweep(cfg, plan, out, progress=progress, lpips_metric=lpips_metric)


def _sweep(cfg: DictConfig, plan: list, out: Path, *, progress: bool, lpips_metric: LPIPSMetric | None) -> dict:
    """The runs of ``plan`` not yet finished in ``out``'s ledger, one after another (see :func:`run_ablation`)."""
    ledger = out / "runs.jsonl"
    records = _load_records(ledger)
    todo = [run for run in plan if records.get(run[0], {}).get("status") != "ok"]
    metric = lpips_metric
    ran = 0
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="ablation", unit="run", disable=not progress)
    for key, description, run_cfg in todo:
        bar.set_postfix_str(f"{description['experiment']} K={description['K']} seed={description['seed']} "
                            f"{description['mode']}")
        record = {"key": key, **description}
        try:
            if metric is None:
                metric = LPIPSMetric(to_dict(run_cfg.data)["root"] or default_data_root())
            record.update(_finished_run(run_cfg, out / "runs" / key, metric))
        except KeyboardInterrupt:  # not recorded: the sweep stops and a re-run redoes this run
            bar.close()
            _write_outputs(out, plan, records, cfg.baseline)
            raise
        except Exception as err:  # a failed run is recorded and the sweep goes on
            record.update({"status": "failed", "error": f"{type(err).__name__}: {err}",
                           "traceback": traceback.format_exc(limit=5)})
        _append(ledger, record)
        records[key] = record
        ran += 1
        bar.update(1)
        _write_outputs(out, plan, records, cfg.baseline)
    bar.close()
    _write_outputs(out, plan, records, cfg.baseline)
    return {"runs": [records[key] for key, _, _ in plan if key in records], "ran": ran,
            "skipped": len(plan) - len(todo), "out": out}


def _finished_run(run_cfg: DictConfig, run_dir: Path, metric: LPIPSMetric) -> dict[str, Any]:
    """Run one inversion into ``run_dir``; its record's results. Raises KeyboardInterrupt if it was stopped early."""
    results = run_inversion(_with_out(run_cfg, run_dir), progress=False, lpips_metric=metric).results
    if results["attack"]["interrupted"]:  # Ctrl-C inside the attack: a best-so-far result, not a finished run
        raise KeyboardInterrupt(f"interrupted after {results['attack']['steps']} steps")
    return {
        "status": "ok", "label_LnAcc": results["label_metrics"]["LnAcc"],
        **{m: results["image_metrics"]["mean"][m] for m in METRICS},
        "per_image_psnr": [image["psnr"] for image in results["image_metrics"]["per_image"]],
        "steps": results["attack"]["steps"], "seconds": results["attack"]["seconds"],
        "images": results["private"]["data_source"],
    }


def _with_out(cfg: DictConfig, out: Path) -> DictConfig:
    """The run's config with its own run directory (the key excludes ``out``)."""
    return load_config(InvertConfig, None, [f"out={out}"], base=cfg)


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
        entry = {m: (float(np.mean(v)), float(np.std(v)), len(v)) for m, v in values.items()}
        pairs = [pair for key, pair in by_pair.items() if key[0] == experiment and mode in pair]
        gains = [pair[mode] - pair[baseline] for pair in pairs if baseline in pair]
        gaps = [pair["oracle"] - pair[mode] for pair in pairs if "oracle" in pair]
        entry["gain_db"] = (float(np.mean(gains)), float(np.std(gains)), len(gains)) if gains else None
        entry["gap_to_oracle_db"] = (float(np.mean(gaps)), float(np.std(gaps)), len(gaps)) if gaps else None
        summary[(experiment, mode)] = entry
    return summary


def _fmt(value: tuple[float, float, int] | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"


def _write_outputs(out: Path, plan: list, records: dict[str, dict], baseline: str) -> None:
    ordered = [records[key] for key, _, _ in plan if key in records]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in ordered:
        writer.writerow({c: r.get(c, "") for c in CSV_COLUMNS})
    with atomic_write(out / "ablation.csv") as handle:
        handle.write(buffer.getvalue().encode())
    summary = summarize(ordered, baseline)
    modes = list(dict.fromkeys(r["mode"] for _, r, _ in plan))
    experiments = list(dict.fromkeys((r["experiment"], r["dataset"]) for _, r, _ in plan))
    lines = ["# Known-versus-unknown-label ablation", "",
             f"{sum(r['status'] == 'ok' for r in ordered)} runs complete, "
             f"{sum(r['status'] == 'failed' for r in ordered)} failed, {len(plan)} planned. "
             f"Mean ± std over seeds and all images (not a best-image subset). Gain: paired PSNR difference "
             f"to `{baseline}` on the same batch and initialisation; gap: `oracle` minus the mode.", ""]
    for experiment, dataset in experiments:
        sources = sorted({r["images"] for r in ordered if r["experiment"] == experiment and r.get("images")})
        lines += [f"## {experiment} ({dataset})", "", f"Images: {'; '.join(sources) or 'n/a'}", "",
                  f"| mode | label LnAcc | PSNR (dB) | SSIM | LPIPS | gain over {baseline} (dB) | gap to oracle (dB) | runs |",
                  "|---|---|---|---|---|---|---|---|"]
        for mode in modes:
            e = summary.get((experiment, mode))
            if e is None:
                continue
            lines.append(f"| {mode} | {_fmt(e.get('label_LnAcc'), 3)} | {_fmt(e.get('psnr'))} | "
                         f"{_fmt(e.get('ssim'), 3)} | {_fmt(e.get('lpips'), 3)} | {_fmt(e['gain_db'])} | "
                         f"{_fmt(e['gap_to_oracle_db'])} | {e['psnr'][2]} |")
        lines.append("")
    failed = [r for r in ordered if r["status"] == "failed"]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {r['experiment']} K={r['K']} seed={r['seed']} {r['mode']}: {r['error']}"
                                           for r in failed] + [""]
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
