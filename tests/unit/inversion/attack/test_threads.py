"""CPU threads: OpenMP's idle threads sleep (set before torch loads its runtime), a small attack runs on one
thread; the user's choice wins over both."""

import os
import re
import subprocess
import sys

import pytest
import torch

from inversion.attack.threads import SMALL_FORWARD_FLOPS, attack_threads, threads_for
from inversion.models import build_model, forward_flops


def _child(code: str, **env: str) -> tuple[str, str]:
    """(stdout, the spin count libgomp reports) of ``code`` run in a fresh interpreter with ``env``."""
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    environ.update(env, OMP_DISPLAY_ENV="VERBOSE")
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True)
    spin = re.search(r"GOMP_SPINCOUNT = '(\d+)'", done.stderr)
    return done.stdout.strip(), spin.group(1) if spin else ""


SHOW = "import os, torch; print(os.environ.get('OMP_WAIT_POLICY'))"


def test_importing_inversion_first_makes_idle_threads_sleep():
    policy, spin = _child("import inversion; " + SHOW)
    assert policy == "PASSIVE"
    assert spin in ("0", "")  # libgomp (Linux wheels) reports it: no spinning; other runtimes say nothing


def test_a_users_policy_is_kept():
    policy, spin = _child("import inversion; " + SHOW, OMP_WAIT_POLICY="ACTIVE")
    assert policy == "ACTIVE"
    assert spin != "0"


def test_nothing_changes_when_torch_was_loaded_first():
    # the runtime has read its settings already: setting the variable then would only mislead
    policy, spin = _child("import torch, inversion; " + SHOW)
    assert policy == "None"
    assert spin != "0"


def fcn(width: int):
    """FCN-3 on MNIST-sized inputs: one input's forward pass costs 2·(784·w + w·w + w·10) FLOPs."""
    return build_model("fcn", num_classes=10, in_channels=1, image_size=(28, 28), width=width, depth=3)


def test_a_small_attack_runs_on_one_thread_a_larger_one_on_torchs_count(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)  # as on a 6-core machine
    flops = 2 * (784 * 300 + 300 * 300 + 300 * 10)  # the default run's FCN-3: 656,400 per input
    assert forward_flops(fcn(300), (1, 28, 28)) == flops
    small = int(SMALL_FORWARD_FLOPS // flops)  # the largest batch still below the threshold
    assert threads_for(fcn(300), (1, 28, 28), small, "cpu") == 1
    assert threads_for(fcn(300), (1, 28, 28), small + 1, "cpu") == 6
    assert threads_for(fcn(300), (1, 28, 28), small, "cuda") == 6  # the GPU computes; the CPU keeps its count
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice wins
    assert threads_for(fcn(300), (1, 28, 28), small, "cpu") == 6


def test_the_thread_count_is_restored_after_the_attack(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(RuntimeError, match="inside"), attack_threads(fcn(300), (1, 28, 28), 8, "cpu") as chosen:
            assert chosen == torch.get_num_threads() == 1
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
