"""The label-restoration benchmark: sweep, scores, result files and early config errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from inversion.config import CONFIG_DIR, ConfigError, RestoreConfig, load_config
from inversion.label_benchmark import run_sweep

REPO = Path(__file__).resolve().parent.parent
DEFAULT = CONFIG_DIR / "restore" / "default.yaml"


def test_sweep_scores_every_setting_and_writes_results(data_root, tmp_path):
    out = tmp_path / "bench"
    results = run_sweep(DEFAULT, [
        f"data.root={data_root}", "data.download=false", f"out={out}", "restore.trials=2",
        "restore.batch_sizes=[4, 8]", "restore.methods=[ilrg, idlg]", "restore.defenses=[none, 'noise:0.5']",
        "model.width=64",
    ], progress=False)
    assert [s["batch_size"] for s in results["settings"]] == [4, 8]
    first = results["settings"][0]
    assert first["trials"] == 2 and first["labels"] == ["real"] and first["model"]["width"] == 64
    clean = first["results"]["none"]["ilrg"]
    assert clean["LnAcc"]["mean"] == 1.0 and clean["LeAcc"]["mean"] == 1.0 and clean["IRec"]["mean"] == 1.0
    assert clean["sums_to_k"]["mean"] == 1.0 and clean["flagged"]["mean"] == 0.0
    # heavy noise on the final-layer gradients destroys exact counting, and the consistency checks see it
    noisy = first["results"]["noise:0.5"]["ilrg"]
    assert noisy["LnAcc"]["mean"] < 1.0 and noisy["flagged"]["mean"] == 1.0
    saved = json.loads((out / "results.json").read_text())
    assert saved["settings"][1]["results"]["none"]["idlg"]["LeAcc"] == results["settings"][1]["results"]["none"]["idlg"]["LeAcc"]
    table = (out / "results.md").read_text()
    assert "| ilrg | 1.000 ± 0.000 | 1.000 ± 0.000 |" in table and "Defense: noise:0.5" in table


@pytest.mark.parametrize("override,message", [
    ("restore.methods=[ilrg, dlg]", "dlg"),
    ("restore.defenses=[gauss:1]", "unknown defense"),
    ("restore.defenses=['clip:4']", "set client.parameters=all"),
    ("restore.trials=0", "restore.trials must be >= 1"),
    ("restore.activations=[gelu]", "gelu"),
])
def test_bad_sweeps_fail_before_any_work(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        run_sweep(DEFAULT, [override, f"out={tmp_path / 'x'}"], progress=False)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "restore").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_restore_config_is_valid(path):
    cfg = load_config(RestoreConfig, path)
    assert cfg.restore.trials >= 1


def test_script_prints_json(data_root, tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "restore_labels.py"), "--config", str(DEFAULT), "--json",
         f"data.root={data_root}", "data.download=false", f"out={tmp_path}", "restore.trials=1",
         "restore.methods=[ilrg]"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert results["settings"][0]["results"]["none"]["ilrg"]["LnAcc"]["mean"] == 1.0
    assert "| method | LeAcc |" in done.stderr


def test_a_new_sweep_moves_an_earlier_sweeps_results_aside(data_root, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.md").write_text("an earlier, larger sweep")
    run_sweep(DEFAULT, [f"data.root={data_root}", "data.download=false", f"out={out}", "restore.trials=1",
                        "restore.methods=[ilrg]"], progress=False)
    moved = list((out / "previous").iterdir())
    assert len(moved) == 1 and (moved[0] / "results.md").read_text() == "an earlier, larger sweep"
    assert (out / "results.md").read_text().startswith("# Label restoration benchmark")
