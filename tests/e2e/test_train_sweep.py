"""Training sweeps (scripts/train.py --sweep): experiments x seeds on the sweep engine, tiny FCNs on 300 real digits."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from _sweeps import EXPERIMENTS, without_timings
from _sweeps import train_sweep_yaml as sweep_yaml

import inversion.cli.train
import inversion.experiments.train
import inversion.experiments.train_sweep
import inversion.sweep.engine
from inversion.config import CONFIG_DIR, ConfigError, TrainConfig, TrainSweepConfig, load_config, to_dict
from inversion.experiments.train_sweep import _plan, run_train_sweep
from inversion.sweep import LEDGER_NAME
from inversion.utils.fileio import sha256_file


def train_sweep(path: Path, overrides=(), **options) -> dict:
    """The training sweep of a sweep file, as ``scripts/train.py --sweep`` runs it: loaded and resolved, then run."""
    return run_train_sweep(load_config(TrainSweepConfig, path, overrides), **options)


@pytest.fixture(scope="module")
def swept(data_root, tmp_path_factory):
    """The 2 x 2 sweep (sgd and adam, seeds 0 and 1), run once in this process: (its yaml, execute's result)."""
    path = sweep_yaml(tmp_path_factory.mktemp("sweep"), data_root)
    return path, train_sweep(path, progress=False)


def test_every_run_trains_into_its_folder_with_the_checkpoints_and_accuracies_its_record_lists(swept):
    _, done = swept
    out = done["out"]
    assert done["ran"] == 4 and done["skipped"] == 0
    assert [(r["experiment"], r["seed"], r["status"]) for r in done["runs"]] == [
        ("sgd", 0, "ok"),
        ("sgd", 1, "ok"),
        ("adam", 0, "ok"),
        ("adam", 1, "ok"),
    ]
    for record in done["runs"]:
        folder = out / record["experiment"] / f"seed{record['seed']}"
        log = json.loads((folder / "train_log.json").read_text())
        assert [c["file"] for c in record["checkpoints"]] == [
            f"{record['experiment']}/seed{record['seed']}/epoch_{e:03d}.pt" for e in (0, 1, 2)
        ]
        assert all(sha256_file(out / c["file"]) == c["sha256"] for c in record["checkpoints"])
        assert [r["held_out_accuracy"] for r in record["epochs"]] == [r["held_out_accuracy"] for r in log["epochs"]]
        assert record["epochs"] == log["epochs"] and [r["epoch"] for r in record["epochs"]] == [0, 1, 2]
        assert (
            (record["train_images"], record["held_out_images"])
            == (240, 60)
            == (log["split"]["train"]["count"], log["split"]["held_out"]["count"])
        )
        assert log["config"]["train"]["seed"] == log["config"]["model"]["seed"] == record["seed"]
        assert log["config"]["out"] == str(folder) and log["status"] == "finished"
    assert done["runs"][2]["epochs"] != done["runs"][0]["epochs"]  # adam's overrides reached its runs


def test_the_result_files_hold_every_run_in_plan_order_and_the_mean_over_seeds(swept):
    _, done = swept
    out = done["out"]
    assert json.loads((out / "training.json").read_text())["runs"] == done["runs"]
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"
    table = (out / "training.md").read_text()
    runs = [line for line in table.splitlines() if re.match(r"\| (sgd|adam) \| \d \|", line)]
    assert [line.split(" | ")[:2] for line in runs] == [
        ["| sgd", "0"],
        ["| sgd", "1"],
        ["| adam", "0"],
        ["| adam", "1"],
    ]
    for line, record in zip(runs, done["runs"]):
        cells = line.split(" | ")
        assert cells[2:5] == [f"{row['held_out_accuracy']:.3f}" for row in record["epochs"]]
        assert cells[5] == "240 / 60"
    for experiment in EXPERIMENTS:
        accuracies = np.array(
            [[row["held_out_accuracy"] for row in r["epochs"]] for r in done["runs"] if r["experiment"] == experiment]
        )  # (seeds, epochs)
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(accuracies.mean(0), accuracies.std(0))]
        assert f"| {experiment} | {' | '.join(cells)} | 2 |" in table


def test_a_second_sweep_skips_every_finished_run_without_training(swept, monkeypatch):
    path, done = swept
    out = done["out"]
    checkpoints = sorted(out.glob("*/seed*/*.pt"))
    before = {p: p.stat().st_mtime_ns for p in checkpoints}
    monkeypatch.setattr(inversion.experiments.train_sweep, "run_training", lambda *a, **k: pytest.fail("trained again"))
    again = train_sweep(path, progress=False)
    assert (again["ran"], again["skipped"]) == (0, 4) and again["runs"] == done["runs"]
    assert len(checkpoints) == 4 * 4 and {p: p.stat().st_mtime_ns for p in checkpoints} == before


def test_seeds_change_the_split_and_the_initial_weights_and_the_same_seed_trains_the_same(swept, data_root, tmp_path):
    _, done = swept
    sgd0, sgd1 = ({c["epoch"]: c["sha256"] for c in r["checkpoints"]} for r in done["runs"][:2])
    assert sgd0[0] != sgd1[0]  # model.seed: other initial weights
    logs = [json.loads((done["out"] / "sgd" / f"seed{s}" / "train_log.json").read_text()) for s in (0, 1)]
    assert logs[0]["split"]["held_out"]["sha256"] != logs[1]["split"]["held_out"]["sha256"]  # train.seed
    (alone,) = train_sweep(sweep_yaml(tmp_path, data_root, {"sgd": []}, seeds=[0]), progress=False)["runs"]
    assert alone["key"] == done["runs"][0]["key"]  # the key does not depend on out
    assert {c["epoch"]: c["sha256"] for c in alone["checkpoints"]} == sgd0
    assert without_timings([alone]) == without_timings(done["runs"][:1])


def test_a_run_stopped_mid_way_is_not_recorded_and_resumes_from_its_resume_pt(swept, data_root, tmp_path, monkeypatch):
    _, done = swept
    path = sweep_yaml(tmp_path, data_root, {"sgd": []}, seeds=[0])
    real, epochs = inversion.experiments.train._train_epoch, []

    def stopped_in_epoch_two(*args, **kwargs):
        epochs.append(args[5][1])  # the epoch's seed: [train.seed, epoch]
        if len(epochs) == 2 and stop:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real_advance, advanced = inversion.sweep.engine.Progress.advance, []

    def advance(self, run, n=1):  # the progress bar moves by one unit per trained epoch
        advanced.append(n)
        real_advance(self, run, n)

    monkeypatch.setattr(inversion.experiments.train, "_train_epoch", stopped_in_epoch_two)
    monkeypatch.setattr(inversion.sweep.engine.Progress, "advance", advance)
    stop = True
    with pytest.raises(KeyboardInterrupt):
        train_sweep(path, progress=False)
    assert not (tmp_path / "out" / LEDGER_NAME).exists() and (tmp_path / "out" / "sgd" / "seed0" / "resume.pt").exists()
    assert advanced == [1]  # epoch 1 (epoch 0 only evaluates the untrained model)
    stop, epochs[:], advanced[:] = False, [], []
    resumed = train_sweep(path, progress=False)
    assert epochs == [2] and advanced == [1] and resumed["ran"] == 1  # epoch 1 came from resume.pt
    assert resumed["runs"][0]["checkpoints"] == done["runs"][0]["checkpoints"]  # bit-identical to an unbroken run
    assert without_timings(resumed["runs"]) == without_timings(done["runs"][:1])


def test_a_failing_run_is_recorded_the_sweep_goes_on_and_the_next_sweep_retries_it(data_root, tmp_path):
    experiments = {"sgd": [], "big": ["train.batch_size=1000"]}  # only 240 images to train on: fails in its run
    done = train_sweep(sweep_yaml(tmp_path, data_root, experiments, seeds=[0]), progress=False)
    ok, failed = done["runs"]
    assert ok["status"] == "ok" and failed["status"] == "failed"
    assert failed["error"] == (
        "ConfigError: train.batch_size=1000 but only 240 images are left for training: use a "
        "smaller batch, a smaller held_out or more images"
    )
    assert not (tmp_path / "out" / "big").exists()
    table = (tmp_path / "out" / "training.md").read_text()
    assert "1 runs finished, 1 failed, 2 planned" in table and f"- big seed=0: {failed['error']}" in table
    again = train_sweep(sweep_yaml(tmp_path, data_root, experiments, seeds=[0]), progress=False)
    assert (again["ran"], again["skipped"]) == (1, 1) and again["runs"][1]["status"] == "failed"


def test_experiments_that_train_the_same_are_distinct_runs_in_their_own_folders(data_root, tmp_path):
    one, two = train_sweep(sweep_yaml(tmp_path, data_root, {"one": [], "two": []}, seeds=[0]), progress=False)["runs"]
    assert one["key"] != two["key"] and (one["status"], two["status"]) == ("ok", "ok")
    assert [c["sha256"] for c in one["checkpoints"]] == [c["sha256"] for c in two["checkpoints"]]
    assert [c["file"].split("/")[0] for c in one["checkpoints"] + two["checkpoints"]] == ["one"] * 3 + ["two"] * 3


def test_a_run_folder_holding_another_training_is_refused_not_overwritten(data_root, tmp_path):
    train_sweep(sweep_yaml(tmp_path, data_root, {"sgd": []}, seeds=[0]), progress=False)
    log = tmp_path / "out" / "sgd" / "seed0" / "train_log.json"
    before = log.read_bytes()
    (changed,) = train_sweep(sweep_yaml(tmp_path, data_root, {"sgd": ["train.lr=0.02"]}, seeds=[0]), progress=False)[
        "runs"
    ]
    assert changed["status"] == "failed" and "was written by another training run" in changed["error"]
    assert log.read_bytes() == before


@pytest.mark.parametrize(
    "change,message",
    [
        (
            dict(config="configs/train/nope.yaml"),
            "experiment 'sgd': config file configs/train/nope.yaml does not exist",
        ),
        (dict(experiments={"sgd": ["train.lrr=0.1"]}), "experiment 'sgd': Key 'lrr' not in 'TrainSettings'"),
        (dict(experiments={"sgd": ["train.epochs=0"]}), "experiment 'sgd': train.epochs: must be >= 1, got 0"),
        (
            dict(experiments={"sgd": ["train.seed=3"]}),
            "experiments: experiment 'sgd' overrides 'train.seed=3'; out, train.seed, model.seed are set",
        ),
        (dict(experiments={"a/b": []}), "experiments: experiment name 'a/b' names a folder in out: use letters"),
        (dict(seeds=[0, 0]), "seeds: lists 0 more than once; list each value once"),
        (dict(seeds=[]), "seeds: is empty; list at least one entry"),
        (dict(overrides=["seedz=[1]"]), "Key 'seedz' not in 'TrainSweepConfig'"),
    ],
)
def test_a_bad_sweep_fails_before_any_run_and_writes_nothing(data_root, tmp_path, change, message):
    overrides = change.pop("overrides", [])
    path = sweep_yaml(tmp_path, data_root, **{"experiments": {"sgd": []}, **change})
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_sweep(path, overrides, progress=False)
    assert not (tmp_path / "out").exists()


def cli(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    """scripts/train.py's entry point in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.argv", ["train", *argv])
    with pytest.raises(SystemExit) as exited:
        inversion.cli.train.run()
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_the_command_runs_a_sweep_and_refuses_what_does_not_go_with_it(swept, tmp_path, monkeypatch, capsys):
    path, done = swept
    code, stdout, _ = cli(monkeypatch, capsys, "--sweep", str(path))
    assert code == 0 and "| sgd | 0 |" in stdout
    assert stdout.splitlines()[-1] == (
        f"0 runs now, 4 already done, 0 failed; results in {done['out']}/: "
        f"training.json, training.md, training.png, runs.jsonl; each run's "
        f"checkpoints in {done['out']}/<experiment>/seed<S>/"
    )
    out = tmp_path / "out"
    for argv, error in [
        (["--sweep", str(path), "--resume"], "--sweep with --resume"),
        (["--sweep", str(path), "--config", "configs/train/default.yaml"], "--sweep with --config"),
        (["--sweep", str(tmp_path / "none.yaml")], f"config file {tmp_path / 'none.yaml'} does not exist"),
        (["--sweep", str(path), f"out={out}", "seeds=[0,0]"], "seeds: lists 0 more than once"),
        (["--executor", "ray", f"out={out}"], "--executor ray: only with --sweep"),
        (["--num-cpus", "2", f"out={out}"], "--num-cpus: only with --executor ray"),
    ]:
        code, _, stderr = cli(monkeypatch, capsys, *argv)
        assert code == 2 and len(stderr.splitlines()) == 1 and stderr.startswith("error: ") and error in stderr
    assert not out.exists()


def test_the_shipped_sweep_plans_fcn3_mnist_for_each_seed_and_optimizer():
    plan = _plan(load_config(TrainSweepConfig, CONFIG_DIR / "train" / "sweeps" / "fcn3_mnist_seeds.yaml"))
    assert [(run.description["experiment"], run.description["seed"]) for run in plan] == [
        ("sgd", 0),
        ("sgd", 1),
        ("sgd", 2),
        ("adam", 0),
        ("adam", 1),
        ("adam", 2),
    ]
    assert len({run.key for run in plan}) == 6 and all(run.units == 20 for run in plan)
    shipped = to_dict(load_config(TrainConfig, CONFIG_DIR / "train" / "fcn3_mnist.yaml"))
    assert plan[0].payload["config"] == {**shipped, "out": "runs/train/sweeps/fcn3_mnist_seeds/sgd/seed0"}
    assert plan[4].payload["config"]["train"]["optimizer"] == "adam" and plan[4].payload["folder"] == "adam/seed1"
