"""The sweep engine: plan -> the runs not yet finished -> execute -> record -> rewrite the result files.

A driver (the ablation, the label-restoration benchmark, the training sweeps) describes its sweep as a
:class:`Sweep`: a plan of runs (:class:`Run`), each with a stable key derived from what it computes, the
worker that runs one, the :class:`~inversion.sweep.ledger.RecordSchema` of its records and the function that
writes its result files from the records. :func:`execute` enters the executor
(:mod:`inversion.sweep.executors`: in this process, or one Ray task per run), holds ``out``
(checked and locked, see :func:`inversion.utils.rundir.run_folder`), skips every run the ledger
``out/runs.jsonl`` has as finished, hands the others to the executor and, as each one ends,
appends its record to the ledger and rebuilds the result files from the ledger in plan order. So
an interrupted sweep resumes without redoing or losing work, failed runs are recorded with their
error and retried by the next sweep, and the results do not depend on the executor. A run
stopped by Ctrl-C is not recorded (the sweep stops; the next one redoes it): nor is a run during
which a Ctrl-C arrived whose KeyboardInterrupt Python lost (see :mod:`inversion.utils.interrupts`). A
finished run whose results the driver's schema refuses (e.g. a NaN score) is recorded as failed.

Result files that lie in ``out`` without a ledger are not this ledger's: a sweep moves them
aside to ``out/previous/<time>/`` before it starts, as :func:`~inversion.utils.rundir.run_folder` does.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from inversion.sweep.executors import Executor, InProcess
from inversion.sweep.ledger import LEDGER_NAME, RecordSchema, append, load_records, record_problem
from inversion.utils.errors import InputError
from inversion.utils.interrupts import watch_sigint
from inversion.utils.rundir import run_folder

__all__ = ["Progress", "Run", "Sweep", "execute"]


@dataclass(frozen=True)
class Run:
    """One run of a sweep."""

    key: str  # stable: derived from what the run computes, never from where or how it runs
    description: dict[str, Any]  # JSON fields copied into its record: what the result tables group by
    payload: Any  # the worker's picklable input (plain data: dicts, lists, strings, numbers)
    units: int = 1  # its share of the progress bar (e.g. its trials)


@dataclass(frozen=True)
class Sweep:
    """What a driver hands the engine."""

    plan: Sequence[Run]
    worker: str  # "package.module:function", called as function(payload, advance) -> the record's results
    schema: RecordSchema  # what the driver's records hold (checked on reading the ledger)
    write: Callable[[Path, list[dict]], None]  # rewrites the result files in out from the records, in plan order
    outputs: Sequence[str] = ()  # the result files' names in out
    name: str = "sweep"  # the progress bar's label
    unit: str = "run"  # the progress bar's unit
    label: Callable[[dict], str] = field(default=lambda description: "")  # a run's description, shown while it runs


class Progress:
    """The sweep's progress bar: each run moves it by its ``units``, in steps its worker reports or at its end."""

    def __init__(self, bar: tqdm, label: Callable[[dict], str]):
        self.bar, self.label = bar, label
        self.moved: Counter[str] = Counter()

    def start(self, run: Run) -> None:
        self.bar.set_postfix_str(self.label(run.description))

    def advance(self, run: Run, n: int = 1) -> None:
        self.moved[run.key] += n
        self.bar.update(n)

    def finish(self, run: Run) -> None:
        self.bar.update(run.units - self.moved.pop(run.key, 0))


def execute(
    sweep: Sweep,
    out: str | Path,
    *,
    executor: Executor | None = None,
    progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> dict:
    """Run (or resume) ``sweep`` into ``out``; the records are appended to ``out/runs.jsonl``.

    Args:
        executor: where the runs execute (default: :class:`~inversion.sweep.executors.InProcess`).
        progress: show a progress bar.
        on_record: called with each record written now.

    Returns:
        ``{"runs": the records in plan order, "ran": how many ran now, "skipped": how many were done,
        "out": the output folder}``.

    Raises:
        ValueError: the plan holds the same run (key) twice.
        KeyboardInterrupt: Ctrl-C (the run it stopped is not recorded).
    """
    _check_plan(sweep.plan)
    executor = executor or InProcess()
    keep = (Path(out) / LEDGER_NAME).is_file()
    # Ctrl-C watched from the start; Ray up first; then out is locked
    with watch_sigint() as interrupted, executor, run_folder(out, sweep.outputs, keep=keep) as out:
        ledger = out / LEDGER_NAME
        records = load_records(ledger, sweep.schema)
        todo = [run for run in sweep.plan if records.get(run.key, {}).get("status") != "ok"]

        def rewrite() -> None:
            sweep.write(out, [records[run.key] for run in sweep.plan if run.key in records])

        total, left = (sum(run.units for run in runs) for runs in (sweep.plan, todo))
        bar = tqdm(total=total, initial=total - left, desc=sweep.name, unit=sweep.unit, disable=not progress)
        tracker = Progress(bar, sweep.label)
        outcomes = executor.run(todo, sweep.worker, tracker)
        ran = 0
        try:
            for run, outcome in outcomes:
                if interrupted():  # a Ctrl-C during the run that Python lost: the run may have stopped early
                    raise KeyboardInterrupt
                record = _checked({"key": run.key, **run.description, **outcome}, sweep.schema)
                append(ledger, record)
                records[run.key] = record
                ran += 1
                tracker.finish(run)
                rewrite()
                if on_record is not None:
                    on_record(record)
            if interrupted():
                raise KeyboardInterrupt
        finally:  # also on Ctrl-C: the files show every record written
            outcomes.close()
            bar.close()
            rewrite()
    return {
        "runs": [records[run.key] for run in sweep.plan if run.key in records],
        "ran": ran,
        "skipped": len(sweep.plan) - len(todo),
        "out": out,
    }


def _check_plan(plan: Sequence[Run]) -> None:
    """Refuse a plan that holds a run twice (the same key: it would run and be recorded twice)."""
    seen: dict[str, dict] = {}
    for run in plan:
        if run.key in seen:
            raise InputError(
                f"the sweep plans the same run twice ({json.dumps(seen[run.key])} and "
                f"{json.dumps(run.description)}): remove the repeated value from the config's lists"
            )
        seen[run.key] = run.description


def _checked(record: dict, schema: RecordSchema) -> dict:
    """``record``, or for a finished run whose results the schema refuses (e.g. a NaN score) a failed record
    saying why: never a finished run the ledger would not read back."""
    problem = record_problem(record, schema) if record["status"] == "ok" else None
    if problem is None:
        return record
    return {
        **{key: record[key] for key in ("key", *schema.fields)},
        "status": "failed",
        "error": f"invalid results: {problem}",
    }
