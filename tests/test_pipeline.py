"""scripts/invert.py's pipeline: client -> labels -> inversion -> evaluation -> run directory."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert results["label_metrics"]["LnAcc"] == 1.0
    assert len(results["image_metrics"]["per_image"]) == 3
    mean = results["image_metrics"]["mean"]
    assert mean["psnr"] > 10 and 0 < mean["ssim"] <= 1 and mean["lpips"] >= 0
    assert results["attack"]["steps"] == 40 and not results["attack"]["interrupted"]
    assert results == done.results


def test_resume_refuses_another_config_and_a_missing_checkpoint(data_root, tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        run_inversion(tiny(data_root, tmp_path / "a"), resume=True, progress=False)
    run_inversion(tiny(data_root, tmp_path / "b"), progress=False)
    with pytest.raises(ConfigError, match="different config"):
        run_inversion(tiny(data_root, tmp_path / "b", "attack.lr=0.5"), resume=True, progress=False)
    again = run_inversion(tiny(data_root, tmp_path / "b"), resume=True, progress=False)
    assert again.result.steps == 0  # the checkpoint was at the end: nothing left to do


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
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "invert.py"), "--labels", "shared", "--config", str(DEFAULT),
         "--out", str(tmp_path / "s"), f"data.root={data_root}", "data.download=false", "client.batch_size=2",
         "attack.max_steps=5"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "labels (shared)" in done.stdout and f"results in {tmp_path / 's'}" in done.stdout
