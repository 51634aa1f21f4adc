"""The label-restoration benchmark: sweep, scores, result files and early config errors."""

import json
import subprocess
import sys

import pytest
from _data import REPO

from inversion.config import CONFIG_DIR, ConfigError, RestoreConfig, load_config
from inversion.experiments.restore_labels import run_sweep

DEFAULT = CONFIG_DIR / "restore_labels" / "default.yaml"


def test_sweep_scores_every_setting_and_writes_results(data_root, tmp_path):
    out = tmp_path / "bench"
    results = run_sweep(
        DEFAULT,
        [
            f"data.root={data_root}",
            "data.download=false",
            f"out={out}",
            "restore.trials=2",
            "restore.batch_sizes=[4, 8]",
            "restore.methods=[ilrg, idlg]",
            "restore.defenses=[none, 'noise:0.5']",
            "model.width=64",
        ],
        progress=False,
    )
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
    assert (
        saved["settings"][1]["results"]["none"]["idlg"]["LeAcc"]
        == results["settings"][1]["results"]["none"]["idlg"]["LeAcc"]
    )
    table = (out / "results.md").read_text()
    assert "| ilrg | 1.000 ± 0.000 | 1.000 ± 0.000 |" in table and "Defense: noise:0.5" in table


@pytest.mark.parametrize(
    "override,message",
    [
        ("restore.methods=[ilrg, dlg]", "^restore.methods: unknown method 'dlg'; choose from ilrg, aux"),
        ("restore.methods=[]", "^restore.methods: is empty; name at least one of ilrg, aux"),
        ("restore.methods=[ilrg, ilrg]", "^restore.methods: lists 'ilrg' more than once"),
        ("restore.defenses=[gauss:1]", "^restore.defenses: unknown defense"),
        ("restore.defenses=['clip:4']", "^restore.defenses: clip defenses .* set client.parameters=all"),
        ("restore.trials=0", "^restore.trials: must be >= 1, got 0$"),
        ("restore.activations=[gelu]", "gelu"),
        ("restore.batch_sizes=[0]", "^restore.batch_sizes: holds 0, but a batch size K is a positive number"),
        ("restore.batch_sizes=[8, -2]", "^restore.batch_sizes: holds -2"),
    ],
)
def test_bad_sweeps_fail_before_any_work(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        run_sweep(DEFAULT, [override, f"out={tmp_path / 'x'}"], progress=False)
    assert not (tmp_path / "x").exists()


def test_script_refuses_a_batch_size_of_0_in_one_line(tmp_path, monkeypatch, capsys):
    import inversion.cli.restore_labels

    monkeypatch.setattr("sys.argv", ["restore_labels", "restore.batch_sizes=[0]", f"out={tmp_path / 'x'}"])
    with pytest.raises(SystemExit) as exited:
        inversion.cli.restore_labels.run()
    assert exited.value.code == 2 and not (tmp_path / "x").exists()
    assert capsys.readouterr().err == (
        "error: restore.batch_sizes: holds 0, but a batch size K is a positive number of "
        "images; leave the list empty for client.batch_size\n"
    )


@pytest.mark.parametrize("path", sorted((CONFIG_DIR / "restore_labels").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_restore_config_is_valid(path):
    cfg = load_config(RestoreConfig, path)
    assert cfg.restore.trials >= 1


@pytest.mark.slow
def test_script_prints_json(data_root, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "restore_labels.py"),
            "--config",
            str(DEFAULT),
            "--json",
            f"data.root={data_root}",
            "data.download=false",
            f"out={tmp_path}",
            "restore.trials=1",
            "restore.methods=[ilrg]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout)
    assert results["settings"][0]["results"]["none"]["ilrg"]["LnAcc"]["mean"] == 1.0
    assert "| method | LeAcc |" in done.stderr


def bench(data_root, out, *overrides):
    """A quick sweep's overrides: one trial, iLRG only."""
    return [
        f"data.root={data_root}",
        "data.download=false",
        f"out={out}",
        "restore.trials=1",
        "restore.methods=[ilrg]",
        *overrides,
    ]


def test_results_without_a_ledger_are_moved_aside(data_root, tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "results.md").write_text("an earlier sweep, from before the ledger")
    run_sweep(DEFAULT, bench(data_root, out), progress=False)
    moved = list((out / "previous").iterdir())
    assert len(moved) == 1 and (moved[0] / "results.md").read_text() == "an earlier sweep, from before the ledger"
    assert (out / "results.md").read_text().startswith("# Label restoration benchmark")
    assert (out / "runs.jsonl").is_file()


def test_a_sweep_resumes_from_its_ledger_and_lists_only_its_own_settings(data_root, tmp_path):
    out, ran = tmp_path / "bench", []
    first = run_sweep(
        DEFAULT, bench(data_root, out, "restore.batch_sizes=[4, 8, 20000]"), progress=False, on_setting=ran.append
    )
    assert [s["batch_size"] for s in ran] == [4, 8]  # K=20000 > the 10,000 digits: recorded as failed, sweep goes on
    (failed,) = first["failed"]
    assert failed["setting"] == {"batch_size": 20000} and "asked for 20000 distinct images" in failed["error"]
    assert f"## Failed settings\n\n- batch_size=20000: {failed['error']}" in (out / "results.md").read_text()
    # the same sweep again: no finished setting is redone, the failed one is retried
    ran.clear()
    again = run_sweep(
        DEFAULT, bench(data_root, out, "restore.batch_sizes=[4, 8, 20000]"), progress=False, on_setting=ran.append
    )
    assert ran == [] and again["settings"] == first["settings"] and len(again["failed"]) == 1
    assert len((out / "runs.jsonl").read_text().splitlines()) == 3 + 1
    # another sweep into the same out reuses the setting it shares; its files list only its own settings
    second = run_sweep(
        DEFAULT, bench(data_root, out, "restore.batch_sizes=[8, 2]"), progress=False, on_setting=ran.append
    )
    assert [s["batch_size"] for s in ran] == [2]
    assert [s["batch_size"] for s in second["settings"]] == [8, 2] and second["failed"] == []
    assert second["settings"][0] == first["settings"][1]
    assert json.loads((out / "results.json").read_text())["settings"] == second["settings"]
    table = (out / "results.md").read_text()
    assert "K=8," in table and "K=2," in table and "K=4," not in table and "Failed" not in table
    assert not (out / "previous").exists()
    # more trials compute something else: a new run, not the finished K=8
    ran.clear()
    more = run_sweep(
        DEFAULT,
        bench(data_root, out, "restore.batch_sizes=[8]", "restore.trials=2"),
        progress=False,
        on_setting=ran.append,
    )
    assert [s["trials"] for s in ran] == [2] and [s["trials"] for s in more["settings"]] == [2]
