"""A real Flower federation (FedSGD under FedAvg, Ray simulation) of DP-SGD clients: the server's captured
updates are the clients' true privatized gradients, tied to their private batches; config typos are one-line
errors.

The federation test starts Ray (about 15-30 s on 2 CPU cores, each client importing Opacus); it is skipped
when flwr[simulation] or opacus is not installed.
"""

import json
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from _data import REPO

import inversion
from inversion.config import FederateConfig, load_config
from inversion.experiments.federate import run_federation
from inversion.fl import PrivateBatch, SharedUpdate, client_gradients, client_update
from inversion.fl.dp import DPSGD

pytestmark = [pytest.mark.flower, pytest.mark.ray]  # a Flower federation on a local Ray
CONFIG = REPO / "configs" / "federate" / "default.yaml"
LR = 0.1
DP = DPSGD(noise_multiplier=0.5, max_grad_norm=1.0, delta=1e-5)
RAY_MARKERS = ("ray::", "raylet", "gcs_server", "ray/_private", "ray/dashboard", "default_worker.py")
RUN_MARKER = "GRADLEAK_TEST_FEDERATION"
"""Environment variable set, to a fresh value, while the federation starts: every process it starts inherits it."""


def _ray_processes(marker: bytes) -> set[int]:
    """Pids of live (non-zombie) processes that look like Ray's and were started by this test's federation: their
    environment holds ``marker`` (``RUN_MARKER=<this run's value>``), which no other job's processes carry."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone, or another user's
            continue
        if state != "Z" and marker in environ and any(m in cmdline for m in RAY_MARKERS):
            found.add(int(entry.name))
    return found


@pytest.fixture(scope="module")
def federation(data_root, tmp_path_factory):
    pytest.importorskip("flwr.simulation")
    pytest.importorskip("ray")
    pytest.importorskip("opacus")
    cfg = load_config(
        FederateConfig,
        CONFIG,
        [
            f"data.root={data_root}",
            "data.download=false",
            "model.width=32",
            "client.batch_size=4",
            "federation.clients=2",
            "federation.rounds=1",
            f"federation.lr={LR}",
            f"client.dp_noise_multiplier={DP.noise_multiplier}",
            f"client.dp_max_grad_norm={DP.max_grad_norm}",
            f"client.dp_delta={DP.delta}",
            f"out={tmp_path_factory.mktemp('federation')}",
        ],
    )
    marker = uuid.uuid4().hex
    os.environ[RUN_MARKER] = marker
    started = time.perf_counter()
    try:
        run = run_federation(cfg, progress=False)
    finally:
        del os.environ[RUN_MARKER]
    seconds = time.perf_counter() - started
    return run, seconds, f"{RUN_MARKER}={marker}".encode()


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
        seed = private.record["dp_noise_seed"]  # the client's DP noise seed: in its private file only
        expected = client_update(model, private.images, private.labels, dp=DP, dp_seed=seed).gradients
        assert set(expected) == set(update.gradients)
        # Tolerance: the server recovers g from w' = w - lr*g, which the client rounded to float32, so
        # |g_captured - g| <= 2^-23 |g| + 2^-24 |w'| / lr. atol is 4x the second term (from the largest
        # weight); rtol=1e-5 also covers float32 summation-order differences between the Ray actor
        # (1 thread) and this process.
        w_max = max(float(p.detach().abs().max()) for p in model.parameters())
        atol = w_max * 2.0**-22 / LR
        for name, grad in update.gradients.items():
            torch.testing.assert_close(
                grad, expected[name], rtol=1e-5, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
            )
        # ... and the comparison is meaningful: the gradients, and the DP noise (std σC/K = 0.125 per entry),
        # are far larger than the tolerance
        assert max(float(g.abs().max()) for g in update.gradients.values()) > 1e4 * atol
        plain = client_gradients(model, private.images, private.labels, bn_mode="eval")
        assert max(float((update.gradients[n] - g).abs().max()) for n, g in plain.items()) > 1e4 * atol
        assert str(seed).encode() not in (run.out / client["update"]).read_bytes()
        batches.append(private)

    first, second = (set(b.record["indices"]) for b in batches)
    assert len(first) == len(second) == 4 and not first & second  # disjoint partitions, no repeats
    sizes = {b.record["partition_size"] for b in batches}
    assert sizes == {5000}  # the 10,000-digit MNIST pack split in two
    assert batches[0].record["dp_noise_seed"] != batches[1].record["dp_noise_seed"]
    print(f"2-client 1-round federation: {seconds:.1f} s")


def test_federation_json_records_the_clients_dp_sgd_but_no_noise_seed(federation):
    run, _, _ = federation
    text = run.summary_path.read_text()
    recorded = json.loads(text)["protocol"]["dp"]
    assert recorded == run.dp
    epsilon = DP.epsilon(1.0, 1)  # one step over the whole batch: rate 1 (one round: also ε over all rounds)
    assert {
        k: recorded[k] for k in ("noise_multiplier", "max_grad_norm", "delta", "epsilon", "epsilon_all_rounds")
    } == {
        "noise_multiplier": 0.5,
        "max_grad_norm": 1.0,
        "delta": 1e-5,
        "epsilon": epsilon,
        "epsilon_all_rounds": epsilon,
    }
    assert 0 < epsilon < math.inf
    for client in run.rounds[0]["clients"]:
        assert str(PrivateBatch.load(run.out / client["private"]).record["dp_noise_seed"]) not in text


def test_a_clients_epsilon_over_all_rounds_composes_one_step_per_round():
    """R rounds: R steps at rate 1, as Opacus's RDP accountant gives when driven step by step (its public API)."""
    pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant

    from inversion.experiments.federate import _dp_record

    accountant = RDPAccountant()
    for _ in range(3):
        accountant.step(noise_multiplier=DP.noise_multiplier, sample_rate=1.0)
    record = _dp_record(DP, batch_size=4, rounds=3)
    assert record["epsilon_all_rounds"] == pytest.approx(accountant.get_epsilon(DP.delta), rel=1e-12)
    assert record["epsilon"] == DP.epsilon(1.0, 1) < record["epsilon_all_rounds"]


def test_ray_is_shut_down_and_nothing_is_left_running(federation):
    ray = pytest.importorskip("ray")
    _, _, marker = federation
    assert not ray.is_initialized()
    if not Path("/proc").is_dir():
        pytest.skip("no /proc to list processes")
    deadline = time.monotonic() + 20
    while (left := _ray_processes(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes this federation started still run after it: {sorted(left)}"


def test_config_typo_is_a_one_line_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "scripts/federate.py", "federation.clinets=2", f"out={tmp_path / 'fed'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
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


def test_dp_noise_seeds_are_fresh_or_fixed_and_never_shared_by_two_clients_or_rounds():
    flower = pytest.importorskip("inversion.fl.flower")
    task = flower.TaskInfo(model={"name": "fcn"}, dataset="mnist", input_shape=(1, 28, 28), mean=(0.5,), std=(0.5,))

    def seeds(fixed):
        settings = flower.ClientSettings(task=task, data={}, num_items=10, batch_size=1, dp_noise_seed=fixed)
        return [flower.dp_noise_seed(settings, server_round, pid) for server_round in (1, 2) for pid in (0, 1)]

    assert seeds(3) == seeds(3) != seeds(4) and len(set(seeds(3))) == 4  # reproducible, one per client and round
    assert len(set(seeds(None) + seeds(None))) == 8  # fresh OS entropy on every call


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["client.chunk_size=2"], "^client.chunk_size: must be null with DP-SGD"),  # refused when resolved
        (["model=convnet", "model.width=4"], "batch norm mixes the samples"),  # refused for the model built
    ],
)
def test_dp_sgd_a_client_cannot_run_is_refused_before_the_federation_starts(data_root, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        cfg = load_config(
            FederateConfig,
            CONFIG,
            [
                f"data.root={data_root}",
                "data.download=false",
                "client.dp_noise_multiplier=1",
                *overrides,
                f"out={tmp_path / 'fed'}",
            ],
        )
        run_federation(cfg, progress=False)
    assert not (tmp_path / "fed").exists()


def test_an_impossible_batch_is_refused_before_the_federation_starts(data_root, tmp_path):
    cfg = load_config(
        FederateConfig,
        CONFIG,
        [
            f"data.root={data_root}",
            "data.download=false",
            "client.batch_size=1000000000000",
            "client.replacement=true",
            f"out={tmp_path / 'fed'}",
        ],
    )
    with pytest.raises(ValueError, match="batch size 1,000,000,000,000 cannot fit"):
        run_federation(cfg, progress=False)
    assert not (tmp_path / "fed").exists()
