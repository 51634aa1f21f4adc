"""The label-restoration benchmark behind ``scripts/restore_labels.py``.

A sweep runs T trials (each a new client batch, and a new model unless
``restore.fixed_model``) for every setting of the cross product
dataset x model x activation x K x sampler, applies every defense to the shared
update and every restoration method to the defended update, and scores the
restored counts against the truth with the paper's metrics.

Each setting is one run of :mod:`inversion.sweep`, keyed by its setting and resolved config
(trials, methods, defenses, seeds and every other computed-on value; not ``out``, ``data.root``,
the note or the swept lists, which the setting's own values replace). Its record in the ledger
``out/runs.jsonl`` holds the setting's results, so an interrupted sweep resumes, a failed setting
is recorded with its error (the sweep goes on) and retried by the next sweep, and a sweep with
other settings into the same ``out`` reuses the finished settings it shares. ``results.json`` and
``results.md`` are rebuilt from the ledger after every setting and list this sweep's settings
only, in plan order. Result files found in ``out`` without a ledger (from a sweep before the
ledger) are moved aside to ``out/previous/<time>/``. The settings run in this process, one after
another, or as Ray tasks; the scores do not depend on where.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import resource
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inversion.config import AuxConfig, ConfigError, RestoreConfig, RestoreSweep, load_config
from inversion.fl.defenses import defend_update
from inversion.fl.simulate import client_auxiliary, simulate_client, source_from_config
from inversion.restore import needs_auxiliary, restore_from_update
from inversion.restore.auxiliary import AuxiliaryData
from inversion.sweep import RecordSchema, Run, Sweep, execute
from inversion.sweep.executors import Executor
from inversion.utils.fileio import atomic_write
from inversion.utils.records import as_record, record_digest
from label_restore import InconsistentGradientWarning, label_metrics

__all__ = ["METRICS", "OUTPUTS", "format_markdown", "run_sweep"]

METRICS = ("LeAcc", "LnAcc", "IRec", "count_mae")
OUTPUTS = ("results.json", "results.md")
"""The result files a sweep rebuilds in ``out`` from its ledger."""
NOT_IN_KEY = (
    "out",
    "data.root",
    "restore.note",
    "restore.datasets",
    "restore.models",
    "restore.activations",
    "restore.batch_sizes",
    "restore.samplers",
)
"""What a setting's key leaves out: where files are, the note, and the swept lists (the setting has its values)."""


def _results_problem(record: dict) -> str | None:
    """Why a finished setting's record lacks its results, or None (the rest is checked by the ledger)."""
    result = record.get("result")
    return (
        None
        if isinstance(result, dict) and isinstance(result.get("results"), dict)
        else "a finished setting without its results"
    )


SCHEMA = RecordSchema(fields={"setting": dict}, results_problem=_results_problem)
"""A ledger record: the setting (its swept values), and for a finished one its results."""


def _settings(sweep: RestoreSweep) -> list[dict[str, Any]]:
    """The cross product of the swept values; each a dict of the swept keys only."""
    axes: dict[str, list[Any]] = {
        "data": sweep.datasets,
        "model": sweep.models,
        "activation": [str(a) for a in sweep.activations],
        "batch_size": sweep.batch_sizes,
        "sampler": [str(s) for s in sweep.samplers],
    }
    axes = {k: v for k, v in axes.items() if v}
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())] or [{}]


def _setting_overrides(setting: dict[str, Any], user_overrides: Sequence[str]) -> list[str]:
    """Overrides building one setting's config: its groups, then the user's overrides, then its keys."""
    groups = [f"{g}={setting[g]}" for g in ("data", "model") if g in setting]
    clash = [o for o in user_overrides if o.partition("=")[0] in {g.partition("=")[0] for g in groups}]
    if clash:
        raise ConfigError(f"{clash[0]!r} conflicts with the sweep's own list (restore.datasets / restore.models)")
    keys = {"activation": "model.activation", "batch_size": "client.batch_size", "sampler": "client.sampler"}
    return [*groups, *user_overrides, *(f"{keys[k]}={v}" for k, v in setting.items() if k in keys)]


def _summary(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std())}


def _peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if platform.system() == "Darwin" else 2**10)


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {platform.platform()}"


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text.encode())


def run_sweep(
    config_path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    progress: bool = True,
    on_setting: Callable[[dict], None] | None = None,
    executor: Executor | None = None,
) -> dict:
    """Run (or resume) the benchmark of a config; write ``runs.jsonl``, ``results.json`` and ``results.md``.

    The sweep's settings are compositions of the config itself (``restore.datasets`` and ``restore.models`` select
    the data and model groups, under the same overrides), so the benchmark takes the config's file and overrides:
    the sweep's plan resolves every setting's config (:func:`~inversion.config.load_config`) before any work
    starts, so a typo fails at once and never leaves partial results; each setting then runs from its resolved
    config. The result files are rewritten atomically after each finished setting.

    Args:
        on_setting: called with the results of each setting finished now.
        executor: where the settings run (default: one after another in this process; see
            :func:`inversion.sweep.make_executor`). The scores do not depend on it.

    Returns:
        the results as written to ``results.json``.
    """
    cfg = load_config(RestoreConfig, config_path, overrides)
    plan = []
    for setting in _settings(cfg.restore):
        setting_cfg = load_config(RestoreConfig, config_path, _setting_overrides(setting, overrides))
        key = record_digest(setting_cfg, ignore=NOT_IN_KEY, setting=setting)[:16]
        payload = {"setting": setting, "config": as_record(setting_cfg)}
        plan.append(Run(key, {"setting": setting}, payload, units=cfg.restore.trials))
    done = execute(
        Sweep(
            plan=plan,
            worker=f"{__name__}:_setting_results",
            schema=SCHEMA,
            write=partial(_write_results, config=as_record(cfg), note=cfg.restore.note),
            outputs=OUTPUTS,
            name="label restoration",
            unit="trial",
        ),
        cfg.out,
        executor=executor,
        progress=progress,
        on_record=None if on_setting is None else partial(_finished_setting, on_setting),
    )
    return json.loads((done["out"] / "results.json").read_text())


def _finished_setting(on_setting: Callable[[dict], None], record: dict) -> None:
    if record["status"] == "ok":
        on_setting(record["result"])


def _write_results(out: Path, records: list[dict], *, config: dict, note: str | None) -> None:
    """Rewrite results.json and results.md from the records (in plan order) of the planned settings."""
    results = {
        "config": config,
        "note": note,
        "machine": _machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": [r["result"] for r in records if r["status"] == "ok"],
        "failed": [{"setting": r["setting"], "error": r["error"]} for r in records if r["status"] == "failed"],
    }
    _write_text(out / "results.json", json.dumps(results, indent=1))
    _write_text(out / "results.md", format_markdown(results))


def _setting_results(payload: dict, advance: Callable[[int], None]) -> dict:
    """The sweep's worker: every trial of one setting (``payload``: the setting and its resolved config's record)."""
    cfg = load_config(RestoreConfig, base=payload["config"])  # the plain record the plan handed over, typed again
    return {"result": _run_setting(payload["setting"], cfg, advance)}


def _run_setting(setting: dict, cfg: RestoreConfig, advance: Callable[[int], None]) -> dict:
    """All trials of one setting (``advance(1)`` after each); per defense and method, mean and std of every score.

    Trial t uses the setting's config with seeds + t: a new batch, and a new model unless ``fixed_model``.
    """
    sweep = cfg.restore
    methods, defenses = sweep.methods, sweep.parsed_defenses()
    keys = (*METRICS, "LnAcc_corrected", "sums_to_k", "flagged", "count_noise", "ms")
    scores: dict[str, dict[str, dict[str, list[float]]]] = {
        d.spec: {m: {k: [] for k in keys} for m in methods} for d in defenses
    }
    client_seconds, sources, labels_kind = [], set(), set()
    images = source_from_config(cfg.data)  # the same for every trial: only seeds change
    aux_cfg = cfg.aux
    reads_aux = any(needs_auxiliary(m) for m in methods)  # the server's own labelled images, drawn for every trial
    aux_records = []
    for trial in range(sweep.trials):
        model = cfg.model if sweep.fixed_model else dataclasses.replace(cfg.model, seed=cfg.model.seed + trial)
        client = dataclasses.replace(cfg.client, seed=cfg.client.seed + trial)
        trial_cfg = dataclasses.replace(cfg, model=model, client=client)
        start = time.perf_counter()
        run = simulate_client(trial_cfg, progress=False, source=images)
        client_seconds.append(time.perf_counter() - start)
        sources.add(run.batch.source)
        labels_kind.add(run.private.record["labels"])
        num_classes = run.update.final_layer_gradients(run.model)[0].shape[0]
        truth = np.bincount(run.private.labels.numpy(), minlength=num_classes)
        aux = None
        if reads_aux:  # new ones per trial, never the client's batch
            aux = client_auxiliary(dataclasses.replace(aux_cfg, seed=aux_cfg.seed + trial), run)
            aux_records.append(aux.record)
        for defense in defenses:
            defended = defend_update(run.update, defense, seed=trial)
            for method in methods:
                start = time.perf_counter()
                with warnings.catch_warnings():  # counted in "flagged" instead of one warning per trial
                    warnings.simplefilter("ignore", InconsistentGradientWarning)
                    result = restore_from_update(method, defended, run.model, **_aux_options(method, aux, aux_cfg))
                elapsed = time.perf_counter() - start
                metrics = label_metrics(result.raw_counts, truth)
                corrected = label_metrics(result.counts, truth)
                entry = scores[defense.spec][method]
                for key in METRICS:
                    entry[key].append(metrics[key])
                entry["LnAcc_corrected"].append(corrected["LnAcc"])
                entry["sums_to_k"].append(float(corrected["sums_to_k"]))
                entry["flagged"].append(float(bool(result.diagnostics)))
                entry["count_noise"].append(_measured_count_noise(result.details["noise"]))  # the update has fc
                entry["ms"].append(1000.0 * elapsed)
        advance(1)
    return {
        "setting": setting,
        "dataset": str(cfg.data.name),
        "model": run.model.config,
        "batch_size": cfg.client.batch_size,
        "sampler": str(cfg.client.sampler),
        "labels": sorted(labels_kind),
        "data_source": sorted(sources)[0] if len(sources) == 1 else sorted(sources),
        "trials": sweep.trials,
        "model_per_trial": not sweep.fixed_model,
        "model_seed": cfg.model.seed,
        "client_seconds": _summary(client_seconds),
        "aux": None
        if not aux_records
        else {**aux_records[0], "seed": f"{aux_cfg.seed} + trial", "size": _summary([r["size"] for r in aux_records])},
        "peak_memory_mb": _peak_memory_mb(),
        "results": {
            spec: {m: {k: _summary(v) for k, v in per_method.items()} for m, per_method in by_method.items()}
            for spec, by_method in scores.items()
        },
    }


def _aux_options(method: str, aux: AuxiliaryData | None, aux_cfg: AuxConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`restore_from_update` for ``method``: the auxiliary set for a method that
    reads it (:func:`~inversion.restore.needs_auxiliary`)."""
    if not needs_auxiliary(method):
        return {}
    return {"aux": aux, "missing_classes": str(aux_cfg.missing_classes)}


def _setting_name(setting: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in setting.items()) or "the single setting"


def _fmt(summary: dict[str, float], digits: int = 3) -> str:
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def _measured_count_noise(noise: dict[str, Any]) -> float:
    """K·σ̂ as the benchmark records it: 0 where σ̂ is at the float rounding floor (nothing to measure, and its
    digits depend on the thread count), else to 3 significant digits (so the in-process and Ray runs agree)."""
    if noise["std"] <= noise["rounding_floor"]:
        return 0.0
    return float(f"{noise['count_noise']:.3g}")


def _count_noise(scores: dict) -> str:
    """The K·σ̂ column: a setting recorded before the noise estimate has none."""
    return f"{scores['count_noise']['mean']:.2g}" if "count_noise" in scores else "-"


def format_markdown(results: dict) -> str:
    """Markdown tables of a results dict: one per setting and defense, methods as rows."""
    lines = ["# Label restoration benchmark", "", f"Measured {results['date']} on {results['machine']}.", ""]
    if results.get("note"):
        lines += [f"Note: {results['note']}", ""]
    lines += [
        "LeAcc, LnAcc, IRec and count MAE (mean over classes of |restored - true| count) score the raw "
        'counts, as the paper does; "flagged": the fraction of trials whose '
        "gradients failed the consistency checks (label_restore.consistency: counts unreliable); K·σ̂: the counts' "
        "noise in samples per class, estimated from the gradients' class sums (noise-dominated above ~0.26 at C = 10; "
        "0: no more than float rounding).",
        "",
    ]
    for record in results["settings"]:
        model = record["model"]
        size = "x".join(str(s) for s in model["image_size"])
        lines += [
            f"## {record['dataset']} / {model['name']} ({model['activation']}, {model['num_classes']} classes, "
            f"{size} inputs), K={record['batch_size']}, sampler {record['sampler']}",
            "",
            f"{record['trials']} trials ({'a new' if record['model_per_trial'] else 'one fixed'} untrained model per "
            f"trial); labels: {', '.join(record['labels'])}; images: {record['data_source']}; "
            f"client computation {_fmt(record['client_seconds'], 2)} s per trial; "
            f"peak memory {record['peak_memory_mb']:,.0f} MiB."
            + (
                ""
                if not record.get("aux")
                else f" aux: {record['aux']['size']['mean']:,.0f} labelled auxiliary images per trial from the "
                f"client's images without its batch ({record['aux']['classes']} classes, "
                f"{record['aux']['labels']} labels)."
            ),
            "",
        ]
        for spec, by_method in record["results"].items():
            lines += [
                f"Defense: {spec}",
                "",
                "| method | LeAcc | LnAcc | IRec | count MAE | LnAcc (sum-to-K) | sums to K | flagged | K·σ̂ | ms |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
            for method, m in by_method.items():
                lines.append(
                    f"| {method} | {_fmt(m['LeAcc'])} | {_fmt(m['LnAcc'])} | {_fmt(m['IRec'])} | "
                    f"{_fmt(m['count_mae'])} | {_fmt(m['LnAcc_corrected'])} | {m['sums_to_k']['mean']:.2f} | "
                    f"{m['flagged']['mean']:.2f} | {_count_noise(m)} | "
                    f"{_fmt(m['ms'], 1)} |"
                )
            lines.append("")
    if results.get("failed"):
        lines += (
            ["## Failed settings", ""]
            + [f"- {_setting_name(f['setting'])}: {f['error']}" for f in results["failed"]]
            + [""]
        )
    return "\n".join(lines)
