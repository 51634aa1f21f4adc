"""The executor options of the sweep commands (``scripts/ablate.py``, ``scripts/restore_labels.py``,
``scripts/train.py --sweep``)."""

from __future__ import annotations

import argparse

from inversion.sweep.executors import EXECUTORS, Executor, make_executor

__all__ = ["add_executor_options", "executor_from_args", "report"]


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """``--executor`` and the Ray options; not part of any run's config (the results do not depend on them)."""
    group = parser.add_argument_group("where the runs execute")
    group.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="in-process",
        help="in-process: one run after another here (default); ray: one Ray task per run",
    )
    group.add_argument(
        "--address",
        metavar="ADDR",
        help="ray: connect to the running cluster at ADDR (e.g. auto) instead of starting a local Ray",
    )
    group.add_argument("--num-cpus", type=int, metavar="N", help="ray: CPUs of the local Ray (default: all)")
    group.add_argument(
        "--gpus-per-run",
        type=float,
        metavar="G",
        help="ray: GPUs per run where CUDA is available, a fraction shares one (default: 1)",
    )
    group.add_argument(
        "--cpus-per-run", type=int, metavar="N", help="ray: CPUs per run, also its torch threads (default: 1)"
    )


def executor_from_args(args: argparse.Namespace) -> Executor:
    """The executor the parsed options ask for; ExecutorError (one line, exit code 2) if they do not fit."""
    return make_executor(
        args.executor,
        address=args.address,
        num_cpus=args.num_cpus,
        gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run,
    )


def report(done: dict, table: str, files: str) -> None:
    """Print a finished sweep's markdown ``table`` (a file in its out) and what ran, was skipped and failed.

    Args:
        done: what :func:`inversion.sweep.execute` returned.
        table: the name of the markdown result file to print.
        files: the result files, as the line names them.
    """
    failed = sum(r["status"] == "failed" for r in done["runs"])
    out = done["out"]
    print((out / table).read_text())
    print(f"{done['ran']} runs now, {done['skipped']} already done, {failed} failed; results in {out}/: {files}")
