"""Attacking saved updates: the attack never needs the private batch, and scores only come with it."""

import json
import subprocess
import sys

import pytest
import torch
from _data import REPO

from inversion.config import CONFIG_DIR, ConfigError, InvertConfig, ShareConfig, load_config
from inversion.experiments.invert import run_inversion
from inversion.fl import PrivateBatch, SharedUpdate
from inversion.fl.simulate import simulate_client

DEFAULT = CONFIG_DIR / "invert" / "default.yaml"


@pytest.fixture(scope="module")
def shared(data_root, tmp_path_factory):
    """A client's update.pt and private.pt, written apart as scripts/share_update.py does."""
    folder = tmp_path_factory.mktemp("share")
    cfg = load_config(
        ShareConfig,
        CONFIG_DIR / "share_update.yaml",
        ["model=fcn3", "model.width=32", f"data.root={data_root}", "data.download=false", "client.batch_size=3"],
    )
    run = simulate_client(cfg, progress=False)
    return run.update.save(folder / "update.pt"), run.private.save(folder / "private.pt")


def attack_cfg(data_root, out, update, private=None, *extra):
    return load_config(
        InvertConfig,
        DEFAULT,
        [
            f"data.root={data_root}",
            f"out={out}",
            f"update={update}",
            *([f"private={private}"] if private else []),
            "attack.max_steps=30",
            "attack.checkpoint_every=0",
            "attack.snapshot_every=10",
            *extra,
        ],
    )


def test_the_attack_needs_no_private_batch_and_gives_the_same_images(shared, data_root, tmp_path):
    update_path, private_path = shared
    blind = run_inversion(attack_cfg(data_root, tmp_path / "blind", update_path), progress=False)
    scored = run_inversion(attack_cfg(data_root, tmp_path / "scored", update_path, private_path), progress=False)
    assert blind.private is None
    assert torch.equal(blind.result.images, scored.result.images)
    assert blind.result.loss == scored.result.loss
    for out in ("blind", "scored"):  # the saved reconstructions are the same too
        saved = torch.load(tmp_path / out / "reconstruction.pt", weights_only=True)["tensors"]["images"]
        assert torch.equal(saved, blind.result.images)
    no_truth = json.loads((tmp_path / "blind" / "results.json").read_text())
    assert no_truth["image_metrics"] is None and no_truth["label_metrics"] is None and no_truth["true_labels"] is None
    assert no_truth["restoration"]["raw_metrics"] is None and no_truth["private"] is None
    assert sum(no_truth["label_counts"].values()) == 3 and no_truth["attack"]["steps"] == 30
    assert no_truth["update"]["sha256"] == SharedUpdate.load(update_path).sha256
    with_truth = json.loads((tmp_path / "scored" / "results.json").read_text())
    assert with_truth["label_metrics"]["LnAcc"] == 1.0 and with_truth["image_metrics"]["mean"]["psnr"] > 10
    assert {p.name for p in (tmp_path / "blind").iterdir()} >= {"reconstruction.png", "snapshots.png", "results.json"}
    assert not (tmp_path / "blind" / "grid.png").exists() and (tmp_path / "scored" / "grid.png").is_file()
    assert "attacked a saved update" in (tmp_path / "blind" / "config.yaml").read_text()


def test_mixed_or_missing_private_data_is_refused(shared, data_root, tmp_path):
    update_path, private_path = shared
    private = PrivateBatch.load(private_path)
    other = PrivateBatch(private.images, private.labels.flip(0), private.record, "0" * 64)
    other_path = other.save(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="belongs to another update"):
        run_inversion(attack_cfg(data_root, tmp_path / "a", update_path, other_path), progress=False)
    unlinked_path = PrivateBatch(private.images, private.labels, private.record).save(tmp_path / "unlinked.pt")
    with pytest.raises(ValueError, match="tied to no update"):  # an empty link would score any update
        run_inversion(attack_cfg(data_root, tmp_path / "a", update_path, unlinked_path), progress=False)
    with pytest.raises(ConfigError, match="uses the true labels"):
        run_inversion(attack_cfg(data_root, tmp_path / "b", update_path, None, "attack.labels=oracle"), progress=False)
    oracle = run_inversion(
        attack_cfg(data_root, tmp_path / "c", update_path, private_path, "attack.labels=oracle"), progress=False
    )
    assert oracle.results["labels_used"] == sorted(private.labels.tolist())
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def run_script(script, *args, cwd):
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


@pytest.mark.slow
def test_share_then_invert_from_the_command_line(data_root, tmp_path):
    shared = run_script(
        "share_update.py",
        "model=fcn3",
        "model.width=32",
        "client.batch_size=2",
        f"data.root={data_root}",
        "data.download=false",
        f"out={tmp_path / 'share'}",
        cwd=tmp_path,
    )
    assert shared.returncode == 0, shared.stderr[-2000:]
    update, private = tmp_path / "share" / "update.pt", tmp_path / "share" / "private.pt"
    blind = run_script(
        "invert.py", "--update", str(update), "--out", str(tmp_path / "blind"), "attack.max_steps=5", cwd=tmp_path
    )
    assert blind.returncode == 0, blind.stderr[-2000:]
    assert "labels (ilrg): counts" in blind.stdout and "not scored" in blind.stdout and "PSNR" not in blind.stdout
    scored = run_script(
        "invert.py",
        "--update",
        str(update),
        "--private",
        str(private),
        f"data.root={data_root}",
        "--out",
        str(tmp_path / "scored"),
        "attack.max_steps=5",
        cwd=tmp_path,
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert "LnAcc 1.000" in scored.stdout and "PSNR" in scored.stdout
    wrong = run_script("invert.py", "--update", str(update), "client.batch_size=4", cwd=tmp_path)
    assert wrong.returncode == 2 and "does not apply to --update" in wrong.stderr and "Traceback" not in wrong.stderr
    swapped = run_script("invert.py", "--update", str(private), cwd=tmp_path)
    assert swapped.returncode == 2 and "is not a gradleak.SharedUpdate file" in swapped.stderr


def test_aux_labels_on_a_saved_update_draw_from_data_without_the_private_images(shared, data_root, tmp_path):
    update_path, private_path = shared
    overrides = ["attack.labels=aux", "aux.size=400", "attack.max_steps=2", "attack.snapshot_every=0"]
    blind = run_inversion(attack_cfg(data_root, tmp_path / "blind", update_path, None, *overrides), progress=False)
    scored = run_inversion(
        attack_cfg(data_root, tmp_path / "scored", update_path, private_path, *overrides), progress=False
    )
    assert blind.plan.restoration.details["aux"]["excluded"] == 0  # the server alone cannot know them
    assert scored.plan.restoration.details["aux"]["excluded"] == 3  # a simulation keeps them out
    assert scored.results["label_metrics"]["LnAcc"] == 1.0
