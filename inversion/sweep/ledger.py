"""A sweep's ledger, ``runs.jsonl``: one JSON object per line, appended as each run ends.

A record holds the run's ``key``, its description (the fields the result tables group by), its
``status`` and then either the worker's results (``"ok"``) or the ``error`` and traceback
(``"failed"``). The ledger is only ever appended to, so nothing written is lost: a later line
for the same key (a retried failure) wins, but a finished run's record is final: a later line for
its key is logged and skipped. Reading validates every line against the driver's
:class:`RecordSchema`; a torn line (a write cut short) or one that is not a record of this sweep
(e.g. a NaN score) is logged with its file and line number and skipped, so its run is redone. A
new record never joins a torn last line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inversion.utils.fileio import disk_full_named

__all__ = ["LEDGER_NAME", "RecordSchema", "append", "load_records", "record_problem"]

log = logging.getLogger("inversion.sweep")

LEDGER_NAME = "runs.jsonl"

_COMMON = {"key": str, "status": str}  # the fields every record has, before the driver's


@dataclass(frozen=True)
class RecordSchema:
    """What a driver's records hold: the checks of :func:`record_problem` beyond the common fields."""

    fields: Mapping[str, type]  # the description's fields and their types, on every record
    results_problem: Callable[[dict], str | None]  # why a finished ("ok") record's results are invalid, or None


def load_records(path: Path, schema: RecordSchema) -> dict[str, dict]:
    """The run records of the ledger by key (a later line wins, except over a finished run's); bad lines are
    logged and skipped."""
    records: dict[str, dict] = {}
    if path.is_file():
        for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
            if not line.strip():
                continue
            problem: str | None
            try:
                record = json.loads(line)
            except ValueError as err:  # a torn write, or bytes that are not JSON
                problem = f"invalid JSON: {err}"
            else:
                problem = record_problem(record, schema)
                if not problem and records.get(record["key"], {}).get("status") == "ok":
                    problem = f"its run {record['key']} has a finished record already, which stands"
            if problem:
                log.warning("%s:%d: not a run record (%s); skipped", path, number, problem)
            else:
                records[record["key"]] = record
    return records


def record_problem(record: Any, schema: RecordSchema) -> str | None:
    """Why a parsed ledger line is not a run record of ``schema``'s sweep, or None when it is one."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    fields = {**_COMMON, **schema.fields}
    wrong = [name for name, kind in fields.items() if not isinstance(record.get(name), kind)]
    if wrong:
        return f"missing or mistyped: {', '.join(wrong)}"
    if record["status"] == "failed":
        return None if isinstance(record.get("error"), str) else "a failed run without its error"
    if record["status"] != "ok":
        return f"status {record['status']!r} is neither 'ok' nor 'failed'"
    return schema.results_problem(record)


def append(path: Path, record: dict) -> None:
    """Append one record as one line, on a line of its own even after a torn last line.

    Raises:
        DiskFullError: the disk or the quota is full (a line cut short is skipped on reading).
    """
    line = json.dumps(record) + "\n"
    with disk_full_named(path), open(path, "a+b") as handle:  # writes go to the end wherever the read position is
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":  # a write cut short: do not glue this record onto it
                line = "\n" + line
        handle.write(line.encode())
        handle.flush()
