"""A real Flower federation (FedSGD under FedAvg) whose honest-but-curious server captures every update.

From a resolved :class:`~inversion.config.FederateConfig` (``data``, ``model``, ``client`` groups and a
``federation`` section), :func:`run_federation` splits the real images into N disjoint partitions, runs R
rounds of FedSGD in Flower's simulation engine (:mod:`inversion.fl.flower`; needs ``flwr[simulation]``, imported only
when a federation runs), and writes into ``out``::

    captured/round_RRR/global_model.pt  the global state w of round RRR (what the server sent)
    captured/round_RRR/client_P.pt      SharedUpdate: what the server recovered from client P (public)
    private/round_RRR/client_P.pt       PrivateBatch: client P's batch in that round (simulation only)
    federation.json                     config, versions, timings, per-round files and sha256s
    config.yaml                         the resolved config

``captured/`` is exactly what the server holds; ``private/`` and ``federation.json`` (it records the
seeds) belong to the simulation and are for scoring only. With DP-SGD (``client.dp_noise_multiplier``)
every client shares its privatized gradient (:mod:`inversion.fl.dp`); ``federation.json`` records σ, C,
δ and ε, and each client's noise seed (fresh OS entropy unless ``client.dp_noise_seed`` fixes it) is
written only to its private file. Attack a captured update with
``scripts/invert.py --update OUT/captured/round_001/client_0.pt --private OUT/private/round_001/client_0.pt``.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from inversion.config import DataConfig, FederateConfig
from inversion.data.batch import check_fits_in_memory
from inversion.fl.dp import DPSGD, check_dp_model
from inversion.fl.private import PrivateBatch
from inversion.fl.simulate import absolute_data, model_from_config, source_from_config
from inversion.fl.update import SharedUpdate
from inversion.utils.errors import InputError
from inversion.utils.fileio import atomic_write
from inversion.utils.records import as_record, write_yaml_record
from inversion.utils.rundir import run_folder

__all__ = ["FederationRun", "run_federation"]

OUTPUTS = ("captured", "private", "federation.json", "config.yaml")
"""What a federation writes into ``out`` (and what ``overwrite=true`` removes first)."""


@dataclass
class FederationRun:
    """What :func:`run_federation` produced.

    Attributes:
        out: the output folder.
        summary_path: ``out/federation.json``.
        rounds: per round: ``round``, ``global_model``, ``model_sha256``, ``seconds`` and ``clients``
            (``partition_id``, ``node_id``, ``num_examples``, ``update``, ``update_sha256``, ``private``),
            paths relative to ``out``.
        seconds: wall time of the whole run (setup, simulation, checks).
        simulation_seconds: wall time of the Flower simulation (Ray start and stop included).
        data_source: where the images came from.
        dp: the clients' DP-SGD as ``federation.json`` records it (σ, C, δ, ε; :func:`_dp_record`), or None.
    """

    out: Path
    summary_path: Path
    rounds: list[dict[str, Any]]
    seconds: float
    simulation_seconds: float
    data_source: str
    dp: dict[str, Any] | None = None

    @property
    def updates(self) -> list[Path]:
        """Every captured update file, in round then client order."""
        return [self.out / c["update"] for r in self.rounds for c in r["clients"]]


def _dp_record(dp: DPSGD, batch_size: int, rounds: int) -> dict[str, Any]:
    """The public facts of the clients' DP-SGD: σ, C, δ, ε of one update (one step at rate 1), and ε of a
    client that takes part in every round (``rounds`` steps at rate 1, composed)."""
    return {
        **dp.record(batch_size, None),
        "epsilon_all_rounds": dp.epsilon(1.0, rounds),
        "accountant_all_rounds": f"opacus RDP, {rounds} step(s) at sampling rate 1: a client in every round, "
        "without amplification by the sampling of batches or clients",
    }


def _prepare_out(out: Path, overwrite: bool) -> None:
    present = [name for name in OUTPUTS if (out / name).exists()]
    if present and not overwrite:
        raise InputError(
            f"{out} already holds a federation's outputs ({', '.join(present)}); choose another out= "
            "or set overwrite=true to replace them"
        )
    for name in present:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("flwr", "ray", "torch"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _relative(path: str | Path, out: Path) -> str:
    return Path(path).resolve().relative_to(out.resolve()).as_posix()


def _check_links(out: Path, rounds: list[dict[str, Any]]) -> None:
    """Every captured update must have its private batch, tied to it by digest (a broken link is a bug)."""
    for entry in rounds:
        for client in entry["clients"]:
            update = SharedUpdate.load(out / client["update"])
            private = PrivateBatch.load(out / client["private"])
            if update.sha256 != client["update_sha256"]:
                raise RuntimeError(f"{client['update']} changed after capture")
            try:
                private.check_matches(update)
            except ValueError as err:
                raise RuntimeError(f"{client['private']} is not linked to {client['update']}: {err}") from None


def run_federation(
    cfg: FederateConfig, *, progress: bool = True, on_round: Callable[[dict[str, Any]], None] | None = None
) -> FederationRun:
    """Run the federation a :class:`~inversion.config.FederateConfig` describes and write its files (module
    docstring).

    Args:
        cfg: the resolved config (``load_config(FederateConfig, ...)``).
        progress: show a progress bar over rounds.
        on_round: also called with each round's record as the server finishes it.

    Raises:
        ValueError: an invalid setting (e.g. a partition too small for a batch), outputs already in
            ``out``, missing data, or Flower not installed.
        RuntimeError: the federation failed (e.g. a client raised), or a private batch is not linked to
            its captured update.
    """
    started = time.perf_counter()
    fed, client = cfg.federation, cfg.client
    dp = client.dp_sgd()
    data = absolute_data(cfg.data)

    source = source_from_config(DataConfig(**data))  # may download once, here; the clients only read
    spec = source.spec
    model = model_from_config(cfg.model, source)
    if dp is not None:
        check_dp_model(model)

    try:
        from inversion.fl import flower

        dp_record = None if dp is None else _dp_record(dp, client.batch_size, fed.rounds)  # imports opacus
    except ImportError as err:
        raise InputError(str(err)) from None

    task = flower.TaskInfo(
        model={k: v for k, v in model.config.items() if k != "weights"},
        dataset=spec.name,
        input_shape=(spec.channels, *spec.image_size),
        mean=tuple(spec.mean),
        std=tuple(spec.std),
    )
    out = Path(cfg.out).expanduser().resolve()
    settings = flower.ClientSettings(
        task=task,
        data={**data, "download": False},
        num_items=len(source),
        batch_size=client.batch_size,
        sampler=str(client.sampler),
        counts=client.counts,
        classes=client.classes,
        target_class=client.target_class,
        replacement=client.replacement,
        seed=client.seed,
        chunk_size=client.chunk_size,
        partition_seed=fed.partition_seed,
        private_dir=str(out / "private"),
        record={"config": as_record(cfg)},
        dp=dp,
        dp_noise_seed=client.dp_noise_seed,
    )
    if client.replacement:
        check_fits_in_memory(source, client.batch_size)
    partitions = flower.partition_indices(len(source), fed.clients, fed.partition_seed)
    for pid, partition in enumerate(partitions):  # a sampler request a partition cannot meet: fail now, clearly
        try:
            flower.draw_batch(source.targets, partition, settings, spec.num_classes, 1, pid)
        except ValueError as err:
            raise InputError(
                f"client {pid}'s partition ({len(partition)} images) cannot give its batch: {err}"
            ) from None
    with run_folder(out, OUTPUTS, keep=True):  # checked and locked; earlier outputs: refused or removed
        _prepare_out(out, cfg.overwrite)
        bar = tqdm(total=fed.rounds, desc="federation", unit="round", disable=not progress)

        def finished(record: dict[str, Any]) -> None:
            bar.update(1)
            if on_round is not None:
                on_round(record)

        simulation_start = time.perf_counter()
        try:
            rounds = flower.run_fedsgd(
                model,
                settings,
                num_clients=fed.clients,
                rounds=fed.rounds,
                lr=fed.lr,
                bn_mode=str(client.bn_mode),
                captured_dir=out / "captured",
                clients_per_round=fed.clients_per_round,
                cpus_per_client=fed.cpus_per_client,
                on_round=finished,
                verbose=fed.verbose,
            )
        finally:
            bar.close()
        simulation_seconds = time.perf_counter() - simulation_start

        for entry in rounds:
            entry["global_model"] = _relative(entry["global_model"], out)
            for c in entry["clients"]:
                c["update"] = _relative(c["update"], out)
                c["private"] = _relative(flower.update_path(out / "private", entry["round"], c["partition_id"]), out)
        _check_links(out, rounds)

        write_yaml_record(
            cfg, out / "config.yaml", header="# scripts/federate.py: the resolved config of this federation\n"
        )
        seconds = time.perf_counter() - started
        summary = {
            "config": as_record(cfg),
            "versions": _versions(),
            "protocol": {
                "kind": "fedsgd",
                "strategy": "FedAvg (flwr.serverapp.strategy), wrapped by CapturingStrategy",
                "clients": fed.clients,
                "clients_per_round": fed.clients_per_round or fed.clients,
                "rounds": fed.rounds,
                "lr": fed.lr,
                "batch_size": client.batch_size,
                "bn_mode": str(client.bn_mode),
                "dp": dp_record,
                "engine": "flwr.simulation.run_simulation, Ray backend, CPU",
            },
            "data_source": source.description,
            "partitions": [{"partition_id": pid, "size": len(p)} for pid, p in enumerate(partitions)],
            "layout": flower.LAYOUT,
            "timings": {
                "total_s": round(seconds, 3),
                "simulation_s": round(simulation_seconds, 3),
                "rounds_s": [round(r["seconds"], 3) for r in rounds],
            },
            "rounds": rounds,
        }
        summary_path = out / "federation.json"
        with atomic_write(summary_path) as handle:
            handle.write((json.dumps(summary, indent=2) + "\n").encode())
    return FederationRun(out, summary_path, rounds, seconds, simulation_seconds, source.description, dp_record)
