"""Where a sweep's runs execute: :class:`InProcess` (one after another, here) or :class:`RayExecutor`.

An executor is entered around a sweep (the Ray executor starts or connects to Ray there, before
the sweep takes its output folder), takes the runs still to do and yields ``(run, outcome)`` as
each one ends; the engine is the only writer of the ledger and the result files. An outcome is
``{"status": "ok", **the worker's results}``, or ``{"status": "failed", "error": ...,
"traceback": ...}`` when the worker raised. A run stopped by Ctrl-C (KeyboardInterrupt, in the
worker or while waiting for it) ends the iteration with KeyboardInterrupt and is not recorded; so
does, in this process, a full disk (:class:`~inversion.utils.fileio.DiskFullError`: every later run
would fail the same way).

A worker is named ``"package.module:function"`` (importable wherever the run executes) and called
as ``function(payload, advance)``: ``payload`` is the run's picklable description of its work,
``advance(n)`` moves the progress bar by ``n`` of the run's units (a no-op in Ray tasks).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Generator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from inversion.utils.errors import InputError
from inversion.utils.fileio import DiskFullError

if TYPE_CHECKING:
    from inversion.sweep.engine import Progress, Run

__all__ = ["EXECUTORS", "Executor", "ExecutorError", "InProcess", "RayExecutor", "call_worker", "make_executor"]

EXECUTORS = ("in-process", "ray")


class ExecutorError(InputError):
    """An executor cannot be set up (ray missing, options that do not fit, no cluster at the address): a user
    error, reported in one line."""


class Executor(Protocol):
    """Entered around a sweep (to start and stop what it needs), then asked to run the runs still to do."""

    name: str

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc_info) -> None: ...

    def run(self, todo: Sequence[Run], worker: str, progress: Progress) -> Generator[tuple[Run, dict], None, None]:
        """Execute ``todo``; yield each run with its outcome as it ends."""


def resolve_worker(worker: str) -> Callable[[Any, Callable[[int], None]], dict]:
    """The function that ``"package.module:function"`` names."""
    module, _, name = worker.partition(":")
    return getattr(importlib.import_module(module), name)


def call_worker(worker: str, payload: Any, advance: Callable[[int], None]) -> dict:
    """One run's outcome; a failure is caught and described, KeyboardInterrupt and DiskFullError propagate."""
    try:
        results = resolve_worker(worker)(payload, advance)
    except DiskFullError:  # not the run's fault: the sweep stops
        raise
    except Exception as err:  # a failed run is recorded and the sweep goes on
        return {"status": "failed", "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=5)}
    return {"status": "ok", **results}


class InProcess:
    """Every run in this process, one after another, in plan order (the default)."""

    name = "in-process"

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def run(self, todo: Sequence[Run], worker: str, progress: Progress) -> Generator[tuple[Run, dict], None, None]:
        for run in todo:
            progress.start(run)
            yield run, call_worker(worker, run.payload, partial(progress.advance, run))


class RayExecutor:
    """One Ray task per run, on a local Ray started for the sweep or on the cluster at ``address``.

    Each task asks for ``cpus_per_run`` CPUs (and runs torch on as many threads) and, only where
    CUDA is available here, ``gpus_per_run`` GPUs (default 1; a fraction shares a GPU). Entering
    it starts a local Ray (``num_cpus``: its CPUs, at most and by default all that this process may
    use) or connects to ``address``, unless this process already has a Ray; leaving it shuts down
    the Ray it started.
    """

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        gpus_per_run: float | None = None,
        cpus_per_run: int = 1,
    ):
        try:
            import ray  # noqa: F401  (here: only a Ray sweep needs it)
        except ImportError:
            raise ExecutorError("the ray executor needs ray: pip install 'gradleak[ray]'") from None
        import torch

        if address is not None and num_cpus is not None:
            raise ExecutorError("--num-cpus sizes a local Ray; a cluster at --address has its own CPUs")
        if num_cpus is not None and num_cpus < 1:
            raise ExecutorError(f"--num-cpus must be >= 1, got {num_cpus}")
        if cpus_per_run < 1:
            raise ExecutorError(f"--cpus-per-run must be >= 1, got {cpus_per_run}")
        if gpus_per_run is not None and gpus_per_run < 0:
            raise ExecutorError(f"--gpus-per-run must be >= 0, got {gpus_per_run}")
        if address is None:  # a local Ray: this machine's CPUs (a cluster's are unknown here)
            cpus = available_cpus()
            if num_cpus is not None and num_cpus > cpus:
                raise ExecutorError(
                    f"--num-cpus {num_cpus}: this machine has {cpus} CPUs for this process; give "
                    f"at most {cpus} (or leave it out for all), or use a cluster with --address"
                )
            if cpus_per_run > (num_cpus or cpus):
                raise ExecutorError(
                    f"--cpus-per-run {cpus_per_run}: more than the local Ray's {num_cpus or cpus} "
                    f"CPUs, so no run could start; give at most {num_cpus or cpus}"
                )
        cuda = torch.cuda.is_available()
        self.address, self.num_cpus, self.cpus_per_run = address, num_cpus, cpus_per_run
        self.gpus_per_run = (1.0 if gpus_per_run is None else float(gpus_per_run)) if cuda else 0.0

    def __enter__(self) -> RayExecutor:
        """Start a local Ray, or connect to the cluster at ``address``, unless this process already has a Ray."""
        import ray

        self.started = not ray.is_initialized()
        if self.started:
            options: dict[str, Any] = dict(
                include_dashboard=False, log_to_driver=False, ignore_reinit_error=False, logging_level=logging.WARNING
            )
            if self.address is not None:
                options["address"] = self.address
            else:
                options["num_cpus"] = self.num_cpus or available_cpus()
            try:
                with warnings.catch_warnings():  # Ray's FutureWarning about accelerator variables
                    warnings.simplefilter("ignore", FutureWarning)
                    ray.init(**options)
            except Exception as err:
                where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
                raise ExecutorError(f"cannot start {where}: {str(err).strip().splitlines()[0]}") from None
        return self

    def __exit__(self, *exc_info) -> None:
        """Shut down the Ray that :meth:`__enter__` started (not one this process had before)."""
        import ray

        if self.started:
            ray.shutdown()

    def run(self, todo: Sequence[Run], worker: str, progress: Progress) -> Generator[tuple[Run, dict], None, None]:
        import ray

        task = ray.remote(_task).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run, max_retries=0)
        where = (os.getcwd(), list(sys.path))  # relative paths and the worker's module, as here
        pending = {task.remote(worker, run.payload, self.cpus_per_run, *where): run for run in todo}
        try:
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                run = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as err:  # the task itself failed (its worker process died, ...)
                    text = str(err).strip()
                    first = text.splitlines()[0] if text else ""
                    outcome = {"status": "failed", "error": f"{type(err).__name__}: {first}", "traceback": text}
                if outcome["status"] == "interrupted":
                    raise KeyboardInterrupt(outcome["error"])
                yield run, outcome
        finally:  # stopped early (Ctrl-C): nothing left running
            for ref in pending:
                ray.cancel(ref, force=True)


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask where the system has one, else all of them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _task(worker: str, payload: Any, threads: int, cwd: str, path: list[str]) -> dict:
    """A Ray task: one run in a worker process, with the driver's working directory and import path."""
    import torch

    torch.set_num_threads(threads)
    if os.path.isdir(cwd):
        os.chdir(cwd)
    sys.path.extend(entry for entry in path if entry not in sys.path)
    try:
        return call_worker(worker, payload, _no_progress)
    except KeyboardInterrupt as err:
        return {"status": "interrupted", "error": str(err)}


def _no_progress(n: int = 1) -> None:
    """A Ray task's ``advance``: the driver moves the bar when the run ends."""


def make_executor(
    name: str = "in-process",
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    gpus_per_run: float | None = None,
    cpus_per_run: int | None = None,
) -> Executor:
    """The executor ``name`` (one of :data:`EXECUTORS`); the options apply to ``ray`` only."""
    if name == "in-process":
        given = [
            flag
            for flag, value in (
                ("--address", address),
                ("--num-cpus", num_cpus),
                ("--gpus-per-run", gpus_per_run),
                ("--cpus-per-run", cpus_per_run),
            )
            if value is not None
        ]
        if given:
            raise ExecutorError(f"{', '.join(given)}: only with --executor ray")
        return InProcess()
    if name == "ray":
        return RayExecutor(
            address=address,
            num_cpus=num_cpus,
            gpus_per_run=gpus_per_run,
            cpus_per_run=1 if cpus_per_run is None else cpus_per_run,
        )
    raise ExecutorError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
