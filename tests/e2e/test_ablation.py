"""The ablation sweep: paired runs, outputs, failures recorded, and resumption without redoing work."""

import csv
import json
import logging
import math

import pytest
import torch
from _data import REPO
from _sweeps import STEPS
from _sweeps import ablation_yaml as sweep_yaml

import inversion.experiments.ablate
from inversion.attack.problem import AttackProblem
from inversion.attack.runner import Runner
from inversion.attack.steppers import SequentialStepper
from inversion.config import AblateConfig, ConfigError, load_config
from inversion.experiments.ablate import run_ablation


def ablate(path, **options):
    """The sweep of an ablation config file, as scripts/ablate.py runs it: loaded and resolved, then run."""
    return run_ablation(load_config(AblateConfig, path), **options)


def ledger_lines(tmp_path):
    return (tmp_path / "out" / "runs.jsonl").read_text().splitlines()


@pytest.mark.slow
def test_sweep_writes_outputs_records_failures_and_resumes(tmp_path, data_root):
    first = ablate(sweep_yaml(tmp_path, data_root, ["oracle", "shared"]), progress=False)
    assert first["ran"] == 8 and first["skipped"] == 0
    out = tmp_path / "out"
    rows = list(csv.DictReader((out / "ablation.csv").read_text().splitlines()))
    assert len(rows) == 8 and {r["mode"] for r in rows} == {"oracle", "shared"}
    broken = [r for r in rows if r["status"] == "failed"]
    assert len(broken) == 4 and all("no batch-norm layers" in r["error"] for r in broken)
    ok = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    ok = [r for r in ok if r["status"] == "ok"]
    # paired: for a seed, both modes saw the same batch (the true-label run restores exactly the same labels)
    assert {r["seed"] for r in ok} == {0, 1} and all(r["psnr"] > 0 for r in ok)
    table = (out / "ablation.md").read_text()
    assert "| oracle |" in table and "gain over shared" in table and "## Failed runs" in table
    assert (out / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    # resume with one more mode: finished runs are skipped, the failures retried, only new work done
    second = ablate(sweep_yaml(tmp_path, data_root, ["oracle", "shared", "ilrg"]), progress=False)
    assert second["skipped"] == 4 and second["ran"] == 4 + 2 + 2
    modes = {r["mode"] for r in second["runs"] if r["status"] == "ok"}
    assert modes == {"oracle", "shared", "ilrg"}


def test_bad_sweep_fails_before_any_run(tmp_path, data_root):
    path = sweep_yaml(tmp_path, data_root, ["oracle", "dlg"])
    with pytest.raises(ConfigError, match=r"^modes: unknown label mode 'dlg'; choose from oracle, joint, shared"):
        ablate(path, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"^baseline: 'shared' is not among the modes \(oracle\)"):
        ablate(sweep_yaml(tmp_path, data_root, ["oracle"]), progress=False)
    with pytest.raises(ConfigError, match=r"^modes: lists 'shared' more than once; list each value once$"):
        ablate(sweep_yaml(tmp_path, data_root, ["shared", "oracle", "shared"]), progress=False)
    with pytest.raises(ConfigError, match=r"^seeds: lists 1 more than once"):
        ablate(sweep_yaml(tmp_path, data_root, ["shared"], seeds=(1, 0, 1)), progress=False)
    with pytest.raises(ConfigError, match=r"^ablation: experiment 'mnist_small': Key 'widht' not in 'ModelConfig'"):
        ablate(sweep_yaml(tmp_path, data_root, ["shared"], broken=False, extra="model.widht=3"), progress=False)
    assert not (tmp_path / "out").exists()


def interrupt_second_run(monkeypatch, at_call, out):
    """Ctrl-C at the ``at_call``-th optimisation step of the sweep's second run ("end": after its last step).

    The tables written after the first run are removed first, so they exist afterwards only if the
    interrupted sweep rewrote them.
    """
    real_step, real_close, attacks, calls = SequentialStepper.step, Runner.close_restarts, [], []

    def close(self, following):
        if at_call == "end" and attacks.index(self.problem) == 1:
            (out / "ablation.csv").unlink()
            raise KeyboardInterrupt
        return real_close(self, following)

    def step(self, *args):
        if self.problem not in attacks:
            attacks.append(self.problem)
            calls.append(0)
        run = attacks.index(self.problem)
        calls[run] += 1
        if run == 1 and calls[run] == at_call:
            (out / "ablation.csv").unlink()
            raise KeyboardInterrupt
        return real_step(self, *args)

    monkeypatch.setattr(SequentialStepper, "step", step)
    monkeypatch.setattr(Runner, "close_restarts", close)


@pytest.mark.parametrize("at_call", [3, 1, "end"], ids=["best-so-far result", "raised", "after the last step"])
def test_interrupted_run_is_not_recorded_and_is_redone(tmp_path, data_root, monkeypatch, at_call):
    # at step 3 the attack returns its best so far (interrupted=True); at step 1 it has none and raises
    path = sweep_yaml(tmp_path, data_root, ["oracle", "shared", "ilrg"], seeds=[0], broken=False)
    with monkeypatch.context() as patch:
        interrupt_second_run(patch, at_call, tmp_path / "out")
        with pytest.raises(KeyboardInterrupt):
            ablate(path, progress=False)
    (first,) = [json.loads(line) for line in ledger_lines(tmp_path)]
    assert first["mode"] == "oracle" and first["status"] == "ok" and first["steps"] == STEPS
    rows = list(csv.DictReader((tmp_path / "out" / "ablation.csv").read_text().splitlines()))
    assert [r["mode"] for r in rows] == ["oracle"]
    resumed = ablate(path, progress=False)
    assert resumed["skipped"] == 1 and resumed["ran"] == 2
    assert [(r["mode"], r["status"], r["steps"]) for r in resumed["runs"]] == [
        ("oracle", "ok", STEPS),
        ("shared", "ok", STEPS),
        ("ilrg", "ok", STEPS),
    ]


def test_a_nan_score_is_not_a_finished_run_and_never_replaces_one(tmp_path, caplog):
    from inversion.sweep.ledger import load_records

    good = {
        "key": "k1",
        "experiment": "e",
        "dataset": "mnist",
        "model": "fcn",
        "K": 2,
        "seed": 0,
        "mode": "ilrg",
        "status": "ok",
        "psnr": 14.5,
        "ssim": 0.5,
        "lpips": 0.2,
        "label_LnAcc": 1.0,
    }
    ledger = tmp_path / "runs.jsonl"
    lines = [
        good,
        {**good, "psnr": math.nan},
        {**good, "key": "k2", "psnr": math.inf},
        {**good, "key": "k3", "ssim": math.nan},
    ]
    ledger.write_text("".join(json.dumps(line) + "\n" for line in lines))  # json writes NaN and Infinity
    with caplog.at_level(logging.WARNING, logger="inversion.sweep"):
        records = load_records(ledger, inversion.experiments.ablate.SCHEMA)
    assert records == {"k1": good}  # the good record stands; the others' runs are redone
    assert [m.partition("(")[2] for m in caplog.messages] == [
        "a finished run without a finite PSNR (nan)); skipped",
        "a finished run without a finite PSNR (inf)); skipped",
        "ssim not a finite number); skipped",
    ]


def test_bad_ledger_lines_are_reported_skipped_and_redone(tmp_path, data_root, caplog):
    path = sweep_yaml(tmp_path, data_root, ["oracle", "shared", "ilrg"], seeds=[0], broken=False)
    oracle, shared, ilrg = ablate(path, progress=False)["runs"]
    no_status = {k: v for k, v in shared.items() if k != "status"}
    no_psnr = {k: v for k, v in ilrg.items() if k != "psnr"}
    bad = ["[1, 2]", '{"key": 3}', json.dumps(no_status), json.dumps(no_psnr), '{"key": "torn", "sta']
    ledger = tmp_path / "out" / "runs.jsonl"
    ledger.write_text("\n".join([json.dumps(oracle), *bad]))  # no newline at the end: a torn last line
    with caplog.at_level(logging.WARNING, logger="inversion.sweep"):
        resumed = ablate(path, progress=False)
    warned = [m for m in caplog.messages if "not a run record" in m]
    assert len(warned) == len(bad) and all(
        m.startswith(f"{ledger}:{line}: not a run record (") and m.endswith("); skipped")
        for line, m in enumerate(warned, start=2)
    )
    assert resumed["skipped"] == 1 and resumed["ran"] == 2  # the good line stays; the bad lines' runs are redone
    assert [(r["mode"], r["status"]) for r in resumed["runs"]] == [("oracle", "ok"), ("shared", "ok"), ("ilrg", "ok")]
    lines = ledger_lines(tmp_path)
    assert lines[:6] == [json.dumps(oracle), *bad] and len(lines) == 8  # the new records not glued onto the torn one
    assert {json.loads(line)["mode"] for line in lines[6:]} == {"shared", "ilrg"}


def record_runs(monkeypatch):
    """Capture every run of the sweep: (InversionRun, the initial dummies of each restart)."""
    real_run, real_fresh, runs, starts = inversion.experiments.ablate.run_inversion, AttackProblem.fresh_restart, [], []

    def fresh(self, restart):
        state = real_fresh(self, restart)
        starts.append(state.x.clone())
        return state

    def run(cfg, **kwargs):
        first = len(starts)
        done = real_run(cfg, **kwargs)
        runs.append((done, starts[first:]))
        return done

    monkeypatch.setattr(AttackProblem, "fresh_restart", fresh)
    monkeypatch.setattr(inversion.experiments.ablate, "run_inversion", run)
    return runs


def test_modes_are_paired_on_batch_model_and_initialisation(tmp_path, data_root, monkeypatch):
    modes, runs = ["oracle", "shared", "joint"], record_runs(monkeypatch)
    ablate(sweep_yaml(tmp_path, data_root, modes, seeds=[0, 1], broken=False), progress=False)
    assert len(runs) == 2 * len(modes)
    by_seed = {seed: runs[i * len(modes) : (i + 1) * len(modes)] for i, seed in enumerate([0, 1])}  # sweep order
    for seed, pair in by_seed.items():
        assert [done.plan.mode for done, _ in pair] == modes
        (reference, reference_starts), *others = pair
        for done, starts in others:
            assert torch.equal(done.private.images, reference.private.images)
            assert torch.equal(done.private.labels, reference.private.labels)
            assert done.private.record["indices"] == reference.private.record["indices"]
            assert done.results["private"]["data_source"] == reference.results["private"]["data_source"]
            assert done.update.meta.model_sha256 == reference.update.meta.model_sha256
            assert done.results["config"]["attack"]["seed"] == reference.results["config"]["attack"]["seed"] == seed
            assert len(starts) == len(reference_starts) >= 1
            assert all(torch.equal(x, x0) for x, x0 in zip(starts, reference_starts))
    # and the pairing is not trivial: another seed is another batch, model and initialisation
    (zero, zero_starts), (one, one_starts) = by_seed[0][0], by_seed[1][0]
    assert zero.private.record["indices"] != one.private.record["indices"]
    assert zero.update.meta.model_sha256 != one.update.meta.model_sha256
    assert not torch.equal(zero_starts[0], one_starts[0])


def test_experiments_on_the_same_dataset_are_summarised_apart():
    from inversion.experiments.ablate import summarize

    def record(experiment, seed, mode, psnr):
        return {
            "experiment": experiment,
            "dataset": "mnist",
            "K": 8,
            "seed": seed,
            "mode": mode,
            "status": "ok",
            "psnr": psnr,
            "ssim": 0.5,
            "lpips": 0.1,
            "label_LnAcc": 1.0,
        }

    records = [
        record("fedsgd", 0, "ilrg", 40.0),
        record("fedsgd", 0, "shared", 20.0),
        record("fedavg", 0, "ilrg", 16.0),
        record("fedavg", 0, "shared", 12.0),
    ]
    summary = summarize(records, "shared")
    assert summary[("fedsgd", "ilrg")]["psnr"][0] == 40.0 and summary[("fedavg", "ilrg")]["psnr"][0] == 16.0
    assert summary[("fedsgd", "ilrg")]["gain_db"][0] == 20.0 and summary[("fedavg", "ilrg")]["gain_db"][0] == 4.0


@pytest.mark.parametrize("path", sorted(REPO.glob("configs/ablate/*.yaml")), ids=lambda p: p.stem)
@pytest.mark.slow
def test_every_shipped_ablation_profile_plans_valid_runs(path):
    from inversion.config import load_config
    from inversion.experiments.ablate import AblateConfig, _plan

    runs = _plan(load_config(AblateConfig, path))
    assert runs and len({run.key for run in runs}) == len(runs)  # every run distinct
