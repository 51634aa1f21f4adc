"""The ablation sweep: paired runs, outputs, failures recorded, and resumption without redoing work."""
import csv
import json

import pytest

from inversion.ablation import run_ablation
from inversion.config import ConfigError


def sweep_yaml(tmp_path, data_root, modes):
    path = tmp_path / "ablate.yaml"
    common = (f"[data.root={data_root}, data.download=false, model.width=16, attack.max_steps=4, "
              "attack.checkpoint_every=0]")
    path.write_text(
        "experiments:\n"
        f"  - {{name: mnist_small, config: configs/invert/default.yaml, overrides: {common}}}\n"
        f"  - {{name: broken, config: configs/invert/default.yaml, overrides: {common[:-1]}, priors.bn=0.1]}}\n"
        f"batch_sizes: [2]\nseeds: [0, 1]\nmodes: [{', '.join(modes)}]\nbaseline: shared\n"
        f"out: {tmp_path / 'out'}\n"
    )
    return path


def test_sweep_writes_outputs_records_failures_and_resumes(tmp_path, data_root):
    first = run_ablation(sweep_yaml(tmp_path, data_root, ["oracle", "shared"]), progress=False)
    assert first["ran"] == 8 and first["skipped"] == 0
    out = tmp_path / "out"
    rows = list(csv.DictReader(open(out / "ablation.csv")))
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
    second = run_ablation(sweep_yaml(tmp_path, data_root, ["oracle", "shared", "ilrg"]), progress=False)
    assert second["skipped"] == 4 and second["ran"] == 4 + 2 + 2
    modes = {r["mode"] for r in second["runs"] if r["status"] == "ok"}
    assert modes == {"oracle", "shared", "ilrg"}


def test_bad_sweep_fails_before_any_run(tmp_path, data_root):
    path = sweep_yaml(tmp_path, data_root, ["oracle", "dlg"])
    with pytest.raises(ConfigError, match="dlg"):
        run_ablation(path, progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="baseline"):
        run_ablation(sweep_yaml(tmp_path, data_root, ["oracle"]), progress=False)
