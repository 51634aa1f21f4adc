"""scripts/invert.py's pipeline: client -> labels -> inversion -> evaluation -> run directory."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _data import REPO, ctrl_c_at_step

from inversion.config import CONFIG_DIR, ConfigError, InvertConfig, load_config, to_dict
from inversion.experiments.invert import run_inversion

DEFAULT = CONFIG_DIR / "invert" / "default.yaml"


def tiny(data_root, out, *extra):
    return load_config(
        InvertConfig,
        DEFAULT,
        [
            f"data.root={data_root}",
            "data.download=false",
            f"out={out}",
            "client.batch_size=3",
            "model.width=32",
            "attack.max_steps=40",
            "attack.checkpoint_every=20",
            "attack.snapshot_every=20",
            *extra,
        ],
    )


def test_run_writes_results_grid_and_checkpoint(data_root, tmp_path):
    done = run_inversion(tiny(data_root, tmp_path / "run"), progress=False)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"results.json", "grid.png", "snapshots.png", "config.yaml", "checkpoint.pt"} <= files
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["label_mode"] == "ilrg" and results["restoration"]["method"] == "ilrg"
    assert results["labels_used"] == results["true_labels"]  # restoration is exact here
    assert results["restoration"]["diagnostics"] == []  # a consistent update: no finding
    assert results["label_metrics"]["LnAcc"] == 1.0
    assert len(results["image_metrics"]["per_image"]) == 3
    mean = results["image_metrics"]["mean"]
    assert mean["psnr"] > 10 and 0 < mean["ssim"] <= 1 and mean["lpips"] >= 0
    assert results["attack"]["steps"] == 40 and not results["attack"]["interrupted"]
    assert results == done.results


def test_resume_refuses_another_config_and_a_missing_checkpoint(data_root, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        run_inversion(tiny(data_root, tmp_path / "a"), resume=True, progress=False)
    first = run_inversion(tiny(data_root, tmp_path / "b"), progress=False)
    with pytest.raises(ConfigError, match="made by another attack"):
        run_inversion(tiny(data_root, tmp_path / "b", "attack.lr=0.5"), resume=True, progress=False)
    again = run_inversion(tiny(data_root, tmp_path / "b"), resume=True, progress=False)
    assert again.result.steps == first.result.steps == 40  # the checkpoint was at the end: no step added
    assert again.result.restart_losses == first.result.restart_losses


def test_resume_checks_the_checkpoint_itself_not_the_files_beside_it(data_root, tmp_path):
    """A swapped checkpoint, with config.yaml missing or agreeing with it: refused for the identity stored in the
    checkpoint, whatever the files beside it say; a moved folder still resumes."""
    run_inversion(tiny(data_root, tmp_path / "a"), progress=False)
    run_inversion(tiny(data_root, tmp_path / "b", "attack.lr=0.5"), progress=False)
    results_before = (tmp_path / "a" / "results.json").read_bytes()
    (tmp_path / "a" / "config.yaml").unlink()
    shutil.copy(tmp_path / "b" / "checkpoint.pt", tmp_path / "a" / "checkpoint.pt")  # swapped
    with pytest.raises(ConfigError, match="made by another attack"):
        run_inversion(tiny(data_root, tmp_path / "a"), resume=True, progress=False)
    assert (tmp_path / "a" / "results.json").read_bytes() == results_before  # never overwritten with wrong scores
    shutil.copy(tmp_path / "b" / "config.yaml", tmp_path / "a" / "config.yaml")  # config.yaml agrees with it now
    with pytest.raises(ConfigError, match="made by another attack"):
        run_inversion(tiny(data_root, tmp_path / "a"), resume=True, progress=False)
    (tmp_path / "b").rename(tmp_path / "moved")
    resumed = run_inversion(tiny(data_root, tmp_path / "moved", "attack.lr=0.5"), resume=True, progress=False)
    assert resumed.result.steps == 40


def test_ctrl_c_keeps_the_step_count_and_resume_adds_no_phantom_restart(data_root, tmp_path, monkeypatch):
    straight = run_inversion(tiny(data_root, tmp_path / "straight", "attack.restarts=2"), progress=False)
    ctrl_c_at_step(monkeypatch, 25)
    stopped = run_inversion(tiny(data_root, tmp_path / "run", "attack.restarts=2"), progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["attack"]
    assert saved["interrupted"] and saved["steps"] == 24 and len(saved["restart_losses"]) == 1
    monkeypatch.undo()
    resumed = run_inversion(tiny(data_root, tmp_path / "run", "attack.restarts=2"), resume=True, progress=False)
    assert stopped.result.steps == 24 and resumed.result.steps == 80
    assert len(resumed.result.restart_losses) == 2  # no phantom third restart from the interrupted one
    assert resumed.result.restart_losses[1] == straight.result.restart_losses[1]


def test_a_fresh_run_moves_an_earlier_runs_files_aside(data_root, tmp_path):
    out = tmp_path / "run"
    run_inversion(tiny(data_root, out, "attack.snapshot_every=0"), progress=False)
    (out / "snapshots.png").write_bytes(b"an older run's picture")
    (out / "notes.txt").write_text("mine")  # not a run output: left alone
    first_results = (out / "results.json").read_bytes()
    run_inversion(tiny(data_root, out, "attack.snapshot_every=0", "attack.lr=0.2"), progress=False)
    previous = list((out / "previous").iterdir())
    assert len(previous) == 1 and (previous[0] / "results.json").read_bytes() == first_results
    assert (previous[0] / "snapshots.png").is_file() and not (out / "snapshots.png").exists()  # not stale beside
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "results.json").read_text())["config"]["attack"]["lr"] == 0.2


def test_an_inconsistent_update_is_flagged_in_the_results(data_root, tmp_path):
    from inversion.fl import SharedUpdate
    from inversion.fl.simulate import simulate_client
    from label_restore import InconsistentGradientWarning

    client = simulate_client(tiny(data_root, tmp_path / "unused"), progress=False)
    scaled = SharedUpdate.from_gradients(
        {k: v * 1e6 for k, v in client.update.gradients.items()}, client.update.batch_size, client.update.meta
    )
    scaled.save(tmp_path / "update.pt")
    cfg = tiny(
        data_root, tmp_path / "run", f"update={tmp_path / 'update.pt'}", "attack.max_steps=2", "attack.snapshot_every=0"
    )
    with pytest.warns(InconsistentGradientWarning, match="grad_bias"):
        results = run_inversion(cfg, progress=False).results
    assert any("sum |grad_bias|" in finding for finding in results["restoration"]["diagnostics"])


@pytest.mark.parametrize(
    "override,message",
    [
        ("client.parameters=final_layer", "client.parameters: inversion matches the full gradient"),
        ("attack.labels=dlg", "dlg"),
        ("attack.optimizer=lbfgs", "signed gradients are an Adam option"),
        ("priors.nope=0.1", "priors.nope: unknown prior"),
    ],
)
def test_config_errors(data_root, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny(data_root, tmp_path, override)


def test_a_prior_the_model_cannot_serve_is_refused_before_the_attack(data_root, tmp_path):
    cfg = tiny(data_root, tmp_path / "run", "priors.bn=0.1")  # a valid config: FCN-3 has no batch norm to read
    with pytest.raises(ValueError, match="no batch-norm layers"):
        run_inversion(cfg, progress=False)
    assert not (tmp_path / "run" / "results.json").exists()


def test_script_prints_where_the_results_are(data_root, tmp_path):
    """Overrides before, between and after the options (intermixed) all apply."""
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "invert.py"),
            "client.batch_size=2",
            "--labels",
            "shared",
            "--config",
            str(DEFAULT),
            "attack.max_steps=5",
            "--out",
            str(tmp_path / "s"),
            f"data.root={data_root}",
            "data.download=false",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "labels (shared)" in done.stdout and f"results in {tmp_path / 's'}" in done.stdout
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert results["config"]["client"]["batch_size"] == 2 and results["attack"]["steps"] == 5
    # a problem this small runs on one thread (inversion.attack.threads), unless the user chose a count
    assert results["threads"] == (torch.get_num_threads() if "OMP_NUM_THREADS" in os.environ else 1)


def invert_cli(monkeypatch, *args):
    """Run scripts/invert.py's main in this process as run_cli does; its exit code (0 when it returns)."""
    import inversion.cli.invert

    monkeypatch.setattr("sys.argv", ["invert", *args])
    try:
        inversion.cli.invert.run()
    except SystemExit as exited:
        return exited.code
    return 0


def test_ctrl_c_writes_the_best_so_far_and_exits_130(data_root, tmp_path, monkeypatch, capsys):
    ctrl_c_at_step(monkeypatch, 6)
    out = tmp_path / "run"
    code = invert_cli(
        monkeypatch,
        "--config",
        str(DEFAULT),
        f"data.root={data_root}",
        "data.download=false",
        "client.batch_size=2",
        "model.width=16",
        "attack.max_steps=40",
        "--out",
        str(out),
    )
    captured = capsys.readouterr()
    assert code == 130
    assert captured.err.strip().splitlines()[-1] == (
        f"interrupted: the attack stopped after 5 steps; its best result so far is in {out}/ (--resume continues it)"
    )
    assert "matching loss" in captured.out and "interrupted" in captured.out  # the summary comes first
    saved = json.loads((out / "results.json").read_text())["attack"]
    assert saved["interrupted"] and saved["steps"] == 5
    assert torch.load(out / "checkpoint.pt", weights_only=True)["steps"] == 5  # --resume continues from here


def test_resume_refuses_a_missing_or_edited_config_yaml_and_leaves_the_files(data_root, tmp_path):
    out = tmp_path / "run"
    run_inversion(tiny(data_root, out), progress=False)
    results = (out / "results.json").read_bytes()
    config = (out / "config.yaml").read_text()
    (out / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=r"^--resume: .*config.yaml is missing"):
        run_inversion(tiny(data_root, out), resume=True, progress=False)
    assert not (out / "config.yaml").exists() and (out / "results.json").read_bytes() == results
    edited = config.replace("\n  lr: 0.1\n", "\n  lr: 0.5\n")  # attack.lr
    assert edited != config
    (out / "config.yaml").write_text(edited)
    with pytest.raises(ConfigError, match=r"^--resume: .*config.yaml records another config than this run's"):
        run_inversion(tiny(data_root, out), resume=True, progress=False)
    assert (out / "config.yaml").read_text() == edited and (out / "results.json").read_bytes() == results
    (out / "config.yaml").write_text(config.replace(f"out: {out}\n", "out: somewhere/else\n"))  # where, not what
    assert run_inversion(tiny(data_root, out), resume=True, progress=False).result.steps == 40


def test_a_saved_update_fixes_the_model_recorded_and_refuses_model_overrides(data_root, tmp_path, monkeypatch, capsys):
    from inversion.fl.simulate import simulate_client

    update = simulate_client(tiny(data_root, tmp_path / "unused"), progress=False).update  # FCN-3 of width 32
    path = update.save(tmp_path / "update.pt")
    out = tmp_path / "run"
    cfg = tiny(data_root, out, f"update={path}", "model=lenet5", "attack.max_steps=2", "attack.snapshot_every=0")
    done = run_inversion(cfg, progress=False)
    attacked = {"name": "fcn", "width": 32, "depth": 3, "activation": "relu", "num_classes": 10}
    recorded = to_dict(load_config(InvertConfig, out / "config.yaml"))["model"]
    for model in (done.results["config"]["model"], recorded):
        assert {key: str(model[key]) for key in attacked} == {key: str(value) for key, value in attacked.items()}
    assert run_inversion(cfg, resume=True, progress=False).result.steps == 2  # its config.yaml matches
    for override in ("model=lenet5", "model.width=16"):
        assert invert_cli(monkeypatch, "--update", str(path), override, "--out", str(tmp_path / "cli")) == 2
        assert capsys.readouterr().err == (
            f"error: {override.split('=')[0]!r} does not apply to --update {path}: "
            "the update names its model (fcn), which is attacked; only model.weights "
            "(--weights), the state the update was computed on, is used\n"
        )
    assert not (tmp_path / "cli").exists()


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_the_earlier_results(
    data_root, tmp_path, monkeypatch, capsys
):
    import errno
    import os
    from contextlib import contextmanager

    import inversion.experiments.invert

    out = tmp_path / "run"
    args = (
        "--config",
        str(DEFAULT),
        f"data.root={data_root}",
        "data.download=false",
        "client.batch_size=2",
        "model.width=16",
        "attack.max_steps=4",
        "--out",
        str(out),
    )
    assert invert_cli(monkeypatch, *args) == 0
    results = (out / "results.json").read_bytes()
    capsys.readouterr()

    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_write = inversion.experiments.invert.atomic_write

    @contextmanager
    def full_for_results(path):
        with real_write(path) as handle:
            yield FullDisk() if Path(path).name == "results.json" else handle

    monkeypatch.setattr(inversion.experiments.invert, "atomic_write", full_for_results)
    assert invert_cli(monkeypatch, *args, "--resume") == 2
    err = capsys.readouterr().err  # after the progress bar
    assert (
        err.splitlines()[-1]
        == (
            f"error: cannot write {out / 'results.json'}: No space left on device (the disk "
            "or your quota is full); free some space and run again (the files written "
            "before are intact)"
        )
        and "Traceback" not in err
    )
    assert (out / "results.json").read_bytes() == results and not list(out.glob(".results.json.*"))


def test_resume_of_a_simulated_dp_client_needs_a_fixed_noise_seed(data_root, tmp_path):
    """Fresh OS-entropy noise makes another update on every run: refused up front, not as a mismatch later."""
    dp = ("client.dp_noise_multiplier=0.5", "attack.labels=oracle", "attack.max_steps=4", "attack.checkpoint_every=2")
    out = tmp_path / "run"
    run_inversion(tiny(data_root, out, *dp), progress=False)
    results = (out / "results.json").read_bytes()
    with pytest.raises(ConfigError, match=r"^--resume: this simulated DP-SGD client draws fresh noise"):
        run_inversion(tiny(data_root, out, *dp), resume=True, progress=False)
    assert (out / "results.json").read_bytes() == results
    fixed = (*dp, "client.dp_noise_seed=7")
    run_inversion(tiny(data_root, tmp_path / "fixed", *fixed), progress=False)
    assert run_inversion(tiny(data_root, tmp_path / "fixed", *fixed), resume=True, progress=False).result.steps == 4
