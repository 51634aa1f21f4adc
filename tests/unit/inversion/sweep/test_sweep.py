"""The sweep engine: ledger, resumption, failures, Ctrl-C, the executor options, and Ray giving the same rows."""

import contextlib
import errno
import json
import logging
import math
import os
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _sweeps import ablation_yaml as sweep_yaml
from _sweeps import train_sweep_yaml, without_timings

import inversion.cli.ablate
from inversion.config import CONFIG_DIR, AblateConfig, TrainSweepConfig, load_config
from inversion.experiments.ablate import run_ablation
from inversion.experiments.restore_labels import run_sweep
from inversion.experiments.train_sweep import run_train_sweep
from inversion.sweep import LEDGER_NAME, RecordSchema, Run, Sweep, execute, make_executor
from inversion.sweep.executors import ExecutorError
from inversion.utils.fileio import DiskFullError

DEFAULT = CONFIG_DIR / "restore_labels" / "default.yaml"
CALLS = []  # payloads the in-process worker ran, in order


def square(payload: dict, advance) -> dict:
    """A trivial worker: fails while ``payload["fail_unless"]`` names a missing file; Ctrl-C on ``"stop"`` (a file
    it removes first, so that it exists afterwards only if the sweep rewrote it); a Ctrl-C that Python loses on
    ``"lose_ctrl_c"``; ``"value"`` replaces its result, ``"raise"`` is raised."""
    CALLS.append(payload["x"])
    if payload.get("stop"):
        Path(payload["stop"]).unlink()
        raise KeyboardInterrupt
    if "fail_unless" in payload and not Path(payload["fail_unless"]).exists():
        raise RuntimeError(f"no {Path(payload['fail_unless']).name}")
    if payload.get("lose_ctrl_c"):
        lose_ctrl_c()
    if "raise" in payload:
        raise payload["raise"]
    advance(1)
    return {"value": payload.get("value", payload["x"] ** 2)}


def lose_ctrl_c() -> None:
    """A Ctrl-C whose KeyboardInterrupt Python loses, as it does when the signal is handled while a weakref callback
    or a ``__del__`` method runs (seen in an ablation: in a WeakKeyDictionary's callback as tensors were freed)."""
    with contextlib.suppress(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


SCHEMA = RecordSchema(
    fields={"name": str}, results_problem=lambda r: None if isinstance(r.get("value"), int) else "no value"
)


def probe(payload: dict, advance) -> dict:
    """A worker that reports where it ran: its process, torch threads and working directory."""
    import torch

    if payload.get("stop"):
        raise KeyboardInterrupt("stopped")
    if payload.get("fail"):
        raise RuntimeError("probe failed")
    return {"value": payload["x"], "pid": os.getpid(), "threads": torch.get_num_threads(), "cwd": os.getcwd()}


def write_table(out: Path, records: list[dict]) -> None:
    (out / "table.txt").write_text("".join(f"{r['name']} {r['status']} {r.get('value', '-')}\n" for r in records))


def tiny(*payloads: dict, worker: str = "square") -> Sweep:
    plan = [Run(f"key{p['x']}", {"name": f"run{p['x']}"}, p, units=2) for p in payloads]
    return Sweep(plan=plan, worker=f"{__name__}:{worker}", schema=SCHEMA, write=write_table, outputs=("table.txt",))


def ran_now(sweep: Sweep, out: Path, **options) -> list[int]:
    CALLS.clear()
    execute(sweep, out, progress=False, **options)
    return list(CALLS)


def test_engine_writes_the_ledger_and_resumes_without_redoing_finished_runs(tmp_path):
    out = tmp_path / "out"
    assert ran_now(tiny({"x": 1}, {"x": 2}), out) == [1, 2]
    records = [json.loads(line) for line in (out / LEDGER_NAME).read_text().splitlines()]
    assert records == [
        {"key": "key1", "name": "run1", "status": "ok", "value": 1},
        {"key": "key2", "name": "run2", "status": "ok", "value": 4},
    ]
    assert ran_now(tiny({"x": 1}, {"x": 2}), out) == []  # all finished: nothing redone
    # a larger plan does only its new run; the table follows the plan's order and lists only its runs
    done = execute(tiny({"x": 3}, {"x": 2}), out, progress=False)
    assert (done["ran"], done["skipped"]) == (1, 1) and [r["key"] for r in done["runs"]] == ["key3", "key2"]
    assert (out / "table.txt").read_text() == "run3 ok 9\nrun2 ok 4\n"
    assert len((out / LEDGER_NAME).read_text().splitlines()) == 3 and not (out / "previous").exists()


def test_failed_runs_are_recorded_the_sweep_goes_on_and_they_are_retried(tmp_path):
    out, fix = tmp_path / "out", tmp_path / "fix"
    sweep = tiny({"x": 1, "fail_unless": str(fix)}, {"x": 2})
    assert ran_now(sweep, out) == [1, 2]
    failed, ok = [json.loads(line) for line in (out / LEDGER_NAME).read_text().splitlines()]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: no fix"
    assert "square" in failed["traceback"]
    assert ok["status"] == "ok" and (out / "table.txt").read_text() == "run1 failed -\nrun2 ok 4\n"
    fix.touch()
    assert ran_now(sweep, out) == [1]  # the failure is retried, the finished run is not
    assert (out / "table.txt").read_text() == "run1 ok 1\nrun2 ok 4\n"


def test_a_run_stopped_by_ctrl_c_is_not_recorded_and_is_redone(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        ran_now(tiny({"x": 1}, {"x": 2, "stop": str(out / "table.txt")}, {"x": 3}), out)
    assert CALLS == [1, 2]
    assert [json.loads(line)["key"] for line in (out / LEDGER_NAME).read_text().splitlines()] == ["key1"]
    assert (out / "table.txt").read_text() == "run1 ok 1\n"  # rewritten on the way out
    assert ran_now(tiny({"x": 1}, {"x": 2}, {"x": 3}), out) == [2, 3]


@pytest.mark.parametrize("where,recorded", [("in a run", 1), ("after a run's record", 1), ("after the last record", 3)])
def test_a_ctrl_c_that_python_lost_still_stops_the_sweep_and_its_run_is_not_recorded(tmp_path, where, recorded):
    out, lost = tmp_path / "out", []

    def write(out: Path, records: list[dict]) -> None:
        write_table(out, records)
        if len(records) == {"after a run's record": 1, "after the last record": 3}.get(where) and not lost:
            lost.append(len(records))
            lose_ctrl_c()

    payloads = ({"x": 1}, {"x": 2, "lose_ctrl_c": where == "in a run"}, {"x": 3})
    sweep = Sweep(plan=tiny(*payloads).plan, worker=f"{__name__}:square", schema=SCHEMA, write=write)
    with pytest.raises(KeyboardInterrupt):
        ran_now(sweep, out)
    assert [1, 2, 3][: max(recorded, 2)] == CALLS  # the run after a lost Ctrl-C ran, but is not recorded
    keys = [json.loads(line)["key"] for line in (out / LEDGER_NAME).read_text().splitlines()]
    assert keys == ["key1", "key2", "key3"][:recorded]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the sweep's handler is gone
    assert ran_now(tiny({"x": 1}, {"x": 2}, {"x": 3}), out) == [2, 3][: 3 - recorded]


def test_a_script_exits_130_after_a_ctrl_c_that_python_lost(tmp_path, monkeypatch, capsys):
    def lost_while_writing(sweep, *, executor):
        (tmp_path / "ablation.md").write_text("table")
        lose_ctrl_c()
        return {"runs": [], "ran": 0, "skipped": 0, "out": tmp_path}

    monkeypatch.setattr(inversion.cli.ablate, "run_ablation", lost_while_writing)
    monkeypatch.setattr("sys.argv", ["ablate"])
    with pytest.raises(SystemExit) as exited:
        inversion.cli.ablate.run()
    assert exited.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_no_invalid_finished_record_and_no_run_twice(tmp_path, caplog):
    out = tmp_path / "out"
    ran_now(tiny({"x": 1}, {"x": 2, "value": math.nan}), out)  # a NaN result: recorded as a failure, retried
    first, second = [json.loads(line) for line in (out / LEDGER_NAME).read_text().splitlines()]
    assert first["status"] == "ok" and second == {
        "key": "key2",
        "name": "run2",
        "status": "failed",
        "error": "invalid results: no value",
    }
    with (out / LEDGER_NAME).open("a") as ledger:  # a later line never replaces a finished run's record
        ledger.write(json.dumps({**first, "value": 7}) + "\n")
    with caplog.at_level(logging.WARNING, logger="inversion.sweep"):
        done = execute(tiny({"x": 1}, {"x": 2}), out, progress=False)
    assert [(r["key"], r["status"], r["value"]) for r in done["runs"]] == [("key1", "ok", 1), ("key2", "ok", 4)]
    assert caplog.messages == [
        f"{out / LEDGER_NAME}:3: not a run record (its run key1 has a finished record already, which stands); skipped"
    ]
    with pytest.raises(ValueError, match=r"the sweep plans the same run twice \(\{\"name\": \"run3\"\} and"):
        execute(tiny({"x": 3}, {"x": 3}), tmp_path / "twice", progress=False)
    assert not (tmp_path / "twice").exists()


def test_a_full_disk_stops_the_sweep_with_one_line(tmp_path, monkeypatch):
    out = tmp_path / "out"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(DiskFullError):  # in a run: not its failure, the sweep stops and does not record it
        ran_now(tiny({"x": 1}, {"x": 2, "raise": DiskFullError(errno.ENOSPC, "No space", "x.pt")}, {"x": 3}), out)
    assert CALLS == [1, 2] and len((out / LEDGER_NAME).read_text().splitlines()) == 1

    def no_space(*args, **kwargs):
        raise full

    monkeypatch.setattr("inversion.sweep.ledger.open", no_space, raising=False)
    with pytest.raises(DiskFullError) as error:  # writing the ledger
        ran_now(tiny({"x": 1}, {"x": 2}), out)
    assert str(error.value) == (
        f"cannot write {out / LEDGER_NAME}: No space left on device (the disk or your quota "
        "is full); free some space and run again (the files written before are intact)"
    )


def test_torn_and_foreign_ledger_lines_are_reported_skipped_and_redone(tmp_path, caplog):
    out = tmp_path / "out"
    ran_now(tiny({"x": 1}, {"x": 2}, {"x": 3}), out)
    good, second, third = (out / LEDGER_NAME).read_text().splitlines()
    no_value = json.dumps({**json.loads(third), "value": "nine"})
    (out / LEDGER_NAME).write_text("\n".join([good, no_value, second[:20]]))  # a torn last line
    with caplog.at_level(logging.WARNING, logger="inversion.sweep"):
        assert ran_now(tiny({"x": 1}, {"x": 2}, {"x": 3}), out) == [2, 3]
    ledger = out / LEDGER_NAME
    assert len(caplog.messages) == 2
    assert caplog.messages[0] == f"{ledger}:2: not a run record (no value); skipped"
    assert caplog.messages[1].startswith(f"{ledger}:3: not a run record (invalid JSON: ")
    lines = ledger.read_text().splitlines()  # nothing lost, and the new records not glued onto the torn line
    assert lines[:3] == [good, no_value, second[:20]]
    assert [json.loads(line)["key"] for line in lines[3:]] == ["key2", "key3"]


def test_the_progress_bar_counts_every_runs_units(tmp_path, capsys):
    # each run is 2 units: the worker reports 1, the engine adds the rest when the run ends; finished runs count
    execute(tiny({"x": 1}, {"x": 2}), tmp_path, progress=True)
    states = capsys.readouterr().err.strip().split("\r")
    assert "| 0/4 [" in states[1] and "| 4/4 [" in states[-1]
    execute(tiny({"x": 1}, {"x": 2}, {"x": 3}), tmp_path, progress=True)
    states = capsys.readouterr().err.strip().split("\r")
    assert "| 4/6 [" in states[1] and "| 6/6 [" in states[-1]


def test_results_files_without_a_ledger_are_moved_aside(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "table.txt").write_text("an earlier sweep's table")
    ran_now(tiny({"x": 1}), out)
    (moved,) = (out / "previous").iterdir()
    assert (moved / "table.txt").read_text() == "an earlier sweep's table"
    assert (out / "table.txt").read_text() == "run1 ok 1\n"


def test_executor_options_are_checked_before_any_work(monkeypatch, tmp_path, capsys):
    with pytest.raises(ExecutorError, match="--num-cpus: only with --executor ray"):
        make_executor("in-process", num_cpus=2)
    with pytest.raises(ExecutorError, match="a cluster at --address has its own CPUs"):
        make_executor("ray", address="auto", num_cpus=2)
    if __import__("importlib").util.find_spec("ray") is not None:  # a local Ray: at most the CPUs this process has
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        with pytest.raises(
            ExecutorError,
            match=r"^--num-cpus 3: this machine has 2 CPUs for this process; give at "
            r"most 2 \(or leave it out for all\), or use a cluster with --address$",
        ):
            make_executor("ray", num_cpus=3)
        with pytest.raises(ExecutorError, match=r"^--cpus-per-run 2: more than the local Ray's 1 CPUs, so no run"):
            make_executor("ray", num_cpus=1, cpus_per_run=2)
        assert make_executor("ray", num_cpus=2, cpus_per_run=2).num_cpus == 2
        assert make_executor("ray", address="auto", cpus_per_run=8).address == "auto"  # a cluster's CPUs: unknown
    # overrides before, between and after the options; the options reach the executor, not the config
    seen = {}

    def fake_run(sweep, *, executor):
        seen.update(sweep=sweep, executor=executor)
        (tmp_path / "ablation.md").write_text("table")
        return {"runs": [], "ran": 0, "skipped": 0, "out": tmp_path}

    monkeypatch.setattr(inversion.cli.ablate, "run_ablation", fake_run)
    monkeypatch.setattr(
        "sys.argv",
        [
            "ablate",
            "seeds=[0]",
            "--executor",
            "ray",
            "modes=[oracle]",
            "--num-cpus",
            "2",
            "--config",
            str(CONFIG_DIR / "ablate" / "cpu.yaml"),
            "baseline=oracle",
            "out=y",
        ],
    )
    inversion.cli.ablate.run()
    sweep = seen["sweep"]  # the config the command resolved, with every override
    assert isinstance(sweep, AblateConfig) and (sweep.seeds, sweep.modes, sweep.baseline, sweep.out) == (
        [0],
        ["oracle"],
        "oracle",
        "y",
    )
    assert (seen["executor"].name, seen["executor"].num_cpus, seen["executor"].cpus_per_run) == ("ray", 2, 1)
    # without ray installed: one line, exit code 2
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    monkeypatch.setattr("sys.argv", ["ablate", "--executor", "ray"])
    with pytest.raises(SystemExit) as exited:
        inversion.cli.ablate.run()
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: the ray executor needs ray: pip install 'gradleak[ray]'\n"


@pytest.mark.ray
def test_ray_tasks_run_apart_record_failures_and_stop_on_ctrl_c(tmp_path, monkeypatch, data_root):
    ray = pytest.importorskip("ray")
    trainings = train_sweep_yaml(tmp_path, data_root)  # a training sweep on the same Ray (its start costs seconds)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # already running: sweeps use it, keep it
    monkeypatch.chdir(tmp_path)  # the driver now works elsewhere than the Ray it started: its tasks follow it
    try:
        done = execute(
            tiny({"x": 1}, {"x": 2, "fail": True}, {"x": 3}, worker="probe"),
            out,
            progress=False,
            executor=make_executor("ray"),
        )
        # a task stopped by Ctrl-C stops the sweep and is not recorded
        with pytest.raises(KeyboardInterrupt, match="stopped"):
            execute(tiny({"x": 4, "stop": True}, worker="probe"), out, progress=False, executor=make_executor("ray"))
        assert ray.is_initialized()
        ray_sweep = load_config(TrainSweepConfig, trainings, [f"out={tmp_path / 'ray'}"])
        trained = run_train_sweep(ray_sweep, progress=False, executor=make_executor("ray"))
    finally:
        ray.shutdown()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray task: then training is bit-identical
    try:
        here = run_train_sweep(load_config(TrainSweepConfig, trainings, [f"out={tmp_path / 'here'}"]), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert trained["ran"] == here["ran"] == 4 and [r["status"] for r in here["runs"]] == ["ok"] * 4
    assert without_timings(trained["runs"]) == without_timings(here["runs"])  # keys, accuracies, checkpoint sha256
    one, failed, three = done["runs"]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: probe failed"
    assert "probe" in failed["traceback"]
    for record in (one, three):  # in a worker process, on one torch thread, in the driver's working directory
        assert record["status"] == "ok" and record["pid"] != os.getpid()
        assert (record["threads"], record["cwd"]) == (1, str(tmp_path))
    assert (out / "table.txt").read_text() == ""  # the stopped sweep's plan, run4 alone, has no record
    keys = sorted(json.loads(line)["key"] for line in (out / LEDGER_NAME).read_text().splitlines())
    assert keys == ["key1", "key2", "key3"]


def rows(done: dict) -> tuple[list[dict], list[float]]:
    """A sweep's rows without their timings, split into the exact fields and the numbers (PSNR, SSIM, LPIPS, ...)."""
    exact, numbers = [], []
    for record in done["runs"]:
        exact.append({k: v for k, v in record.items() if k not in ("seconds", "traceback", *NUMBERS)})
        numbers += [x for k in NUMBERS if k in record for x in np.atleast_1d(record[k]).tolist()]
    return exact, numbers


def ray_running() -> bool:
    import ray

    return ray.is_initialized()


NUMBERS = ("label_LnAcc", "psnr", "ssim", "lpips", "per_image_psnr")


@pytest.mark.ray
def test_ray_executor_gives_the_same_rows_as_in_process(tmp_path, data_root):
    pytest.importorskip("ray")
    path = sweep_yaml(tmp_path, data_root, ["oracle", "shared"], seeds=[0], broken=True)
    here = run_ablation(load_config(AblateConfig, path, [f"out={tmp_path / 'here'}"]), progress=False)
    ray = run_ablation(
        load_config(AblateConfig, path, [f"out={tmp_path / 'ray'}"]),
        progress=False,
        executor=make_executor("ray", num_cpus=2),
    )
    assert not ray_running()  # the sweep shut down the Ray it started
    assert ray["ran"] == here["ran"] == 4
    (exact, numbers), (ray_exact, ray_numbers) = rows(here), rows(ray)
    assert [r["status"] for r in exact] == ["ok", "ok", "failed", "failed"] and len(numbers) == 2 * (4 + 2)
    assert ray_exact == exact  # same keys, order, descriptions, statuses, errors, steps, images
    # the same numbers; LPIPS sums float32 in another order on a Ray task's one torch thread
    assert ray_numbers == pytest.approx(numbers, rel=1e-6, abs=0)
    for name in ("ablation.csv", "ablation.md", "ablation.png"):
        assert (tmp_path / "ray" / name).is_file()
    finished = sorted(r["key"] for r in here["runs"] if r["status"] == "ok")
    for out in ("here", "ray"):  # each finished run's folder, written by the task where it ran
        assert sorted(p.name for p in (tmp_path / out / "runs").iterdir() if (p / "results.json").is_file()) == finished


def scores(results: dict) -> list[dict]:
    """Every setting's description and scores, without its timings and memory."""
    return [
        {
            **{k: v for k, v in s.items() if k not in ("client_seconds", "peak_memory_mb", "results")},
            "results": {
                spec: {m: {k: v for k, v in per.items() if k != "ms"} for m, per in by_method.items()}
                for spec, by_method in s["results"].items()
            },
        }
        for s in results["settings"]
    ]


@pytest.mark.ray
def test_ray_executor_gives_the_same_benchmark_scores(tmp_path, data_root):
    pytest.importorskip("ray")
    options = [
        f"data.root={data_root}",
        "data.download=false",
        "restore.trials=2",
        "restore.batch_sizes=[4, 8]",
        "restore.methods=[ilrg, idlg]",
        "restore.defenses=[none, 'noise:0.5']",
        "model.width=64",
    ]
    here = run_sweep(DEFAULT, [*options, f"out={tmp_path / 'here'}"], progress=False)
    ray = run_sweep(
        DEFAULT, [*options, f"out={tmp_path / 'ray'}"], progress=False, executor=make_executor("ray", num_cpus=2)
    )
    assert [s["batch_size"] for s in ray["settings"]] == [4, 8] and ray["failed"] == here["failed"] == []
    assert scores(ray) == scores(here)
    ledgers = [
        [json.loads(line)["key"] for line in (tmp_path / out / LEDGER_NAME).read_text().splitlines()]
        for out in ("here", "ray")
    ]
    assert sorted(ledgers[1]) == sorted(ledgers[0]) and len(ledgers[0]) == 2
