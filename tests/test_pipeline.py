"""scripts/invert.py's pipeline: client -> labels -> inversion -> evaluation -> run directory."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inversion.config import CONFIG_DIR, ConfigError, InvertConfig, load_config
from inversion.pipeline import run_inversion

REPO = Path(__file__).resolve().parent.parent
DEFAULT = CONFIG_DIR / "invert" / "default.yaml"


def tiny(data_root, out, *extra):
    return load_config(InvertConfig, DEFAULT, [
        f"data.root={data_root}", "data.download=false", f"out={out}", "client.batch_size=3", "model.width=32",
        "attack.max_steps=40", "attack.checkpoint_every=20", "attack.snapshot_every=20", *extra,
    ])


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
    """A swapped checkpoint, a missing config.yaml, or a killed run's new config.yaml beside an old
    checkpoint: resume trusts only the identity stored in the checkpoint; a moved folder still resumes."""
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
    from inversion.attack.optimize import Inversion
    straight = run_inversion(tiny(data_root, tmp_path / "straight", "attack.restarts=2"), progress=False)
    real_step, calls = Inversion._step, []

    def ctrl_c_at_step_25(self, *args):
        calls.append(1)
        if len(calls) == 25:
            raise KeyboardInterrupt
        return real_step(self, *args)

    monkeypatch.setattr(Inversion, "_step", ctrl_c_at_step_25)
    stopped = run_inversion(tiny(data_root, tmp_path / "run", "attack.restarts=2"), progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["attack"]
    assert saved["interrupted"] and saved["steps"] == 24 and len(saved["restart_losses"]) == 1
    monkeypatch.setattr(Inversion, "_step", real_step)
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
    from inversion.experiment import simulate_client
    from inversion.fl import SharedUpdate
    from label_restore import InconsistentGradientWarning

    client = simulate_client(tiny(data_root, tmp_path / "unused"), progress=False)
    scaled = SharedUpdate.from_gradients({k: v * 1e6 for k, v in client.update.gradients.items()},
                                         client.update.batch_size, client.update.meta)
    scaled.save(tmp_path / "update.pt")
    cfg = tiny(data_root, tmp_path / "run", f"update={tmp_path / 'update.pt'}", "attack.max_steps=2",
               "attack.snapshot_every=0")
    with pytest.warns(InconsistentGradientWarning, match="grad_bias"):
        results = run_inversion(cfg, progress=False).results
    assert any("sum |grad_bias|" in finding for finding in results["restoration"]["diagnostics"])


@pytest.mark.parametrize("override,message", [
    ("priors.bn=0.1", "no batch-norm layers"),
    ("client.parameters=final_layer", "client.parameters=all"),
    ("attack.labels=dlg", "dlg"),
    ("attack.optimizer=lbfgs", "signed gradients are an Adam option"),
])
def test_config_errors(data_root, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_inversion(tiny(data_root, tmp_path, override), progress=False)


def test_script_prints_where_the_results_are(data_root, tmp_path):
    """Overrides before, between and after the options (intermixed) all apply."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "invert.py"), "client.batch_size=2", "--labels", "shared",
         "--config", str(DEFAULT), "attack.max_steps=5", "--out", str(tmp_path / "s"), f"data.root={data_root}",
         "data.download=false"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "labels (shared)" in done.stdout and f"results in {tmp_path / 's'}" in done.stdout
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert results["config"]["client"]["batch_size"] == 2 and results["attack"]["steps"] == 5
    assert results["threads"] == torch.get_num_threads()
