"""The end-to-end run behind ``scripts/invert.py``: update -> labels -> inversion -> evaluation -> files.

:func:`run_inversion` takes a resolved :class:`~inversion.config.InvertConfig`. The update comes from a
simulated client (the config's ``data``, ``model`` and ``client`` groups) or from a saved update file
(``update=``). Either way the attack receives only the
public :class:`~inversion.fl.update.SharedUpdate`; the client's
:class:`~inversion.fl.private.PrivateBatch` (simulated, or ``private=``) is used only for the
progress bar's PSNR, the scores and the pictures, and a run without it gives the same images.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inversion.attack import InversionResult, LabelPlan, get_attack, plan_labels
from inversion.attack.disaggregation_attack import DisaggregationResult
from inversion.attack.settings import resolve_device
from inversion.attack.threads import attack_threads
from inversion.config import ConfigError, InvertConfig, ModelConfig, load_config
from inversion.data import default_data_root
from inversion.evaluation import PSNR_CAP_DB, LPIPSMetric, evaluate_reconstruction, match_images, psnr, save_grid
from inversion.fl._records import save_record
from inversion.fl.private import PrivateBatch
from inversion.fl.server import check_model, model_from_update
from inversion.fl.simulate import (
    ClientRun,
    auxiliary_from_config,
    build_from_model_config,
    check_attack_memory,
    client_auxiliary,
    simulate_client,
    source_from_config,
)
from inversion.fl.update import SharedUpdate
from inversion.models import ClassifierModel, footprint
from inversion.restore import needs_auxiliary
from inversion.restore.auxiliary import AuxiliaryData
from inversion.utils.fileio import atomic_write
from inversion.utils.plotting import save_image_rows
from inversion.utils.records import as_record, record_digest, write_yaml_record
from inversion.utils.rundir import check_out, run_folder
from label_restore import counts_from_labels, label_metrics

__all__ = ["RECONSTRUCTION_FORMAT", "RUN_OUTPUTS", "InversionRun", "run_identity", "run_inversion"]

log = logging.getLogger("inversion.experiments.invert")

CHECKPOINT = "checkpoint.pt"
RUN_OUTPUTS = (
    "config.yaml",
    CHECKPOINT,
    "results.json",
    "reconstruction.pt",
    "reconstruction.png",
    "grid.png",
    "snapshots.png",
)
"""What a run writes into ``out`` (a fresh run moves an earlier run's copies to ``out/previous/``)."""
RECONSTRUCTION_FORMAT = "gradleak.Reconstruction"


@dataclass
class InversionRun:
    """Everything one run produced.

    Attributes:
        update: the attacked update (public).
        private: the client's private batch, or None when the run had none (no scores then).
        model: the server's model.
        result: the attack's result.
        plan: the labels the attack used.
        results: what ``results.json`` holds.
        out: the run directory.
    """

    update: SharedUpdate
    private: PrivateBatch | None
    model: ClassifierModel
    result: InversionResult
    plan: LabelPlan
    results: dict[str, Any]
    out: Path


def _check_resume(out: Path, resume: bool, run: InvertConfig) -> bool:
    """Whether to resume; refuses resuming without a checkpoint (its identity is checked when it is loaded), and
    a simulated DP-SGD client whose noise is fresh OS entropy (its update differs from the checkpoint's)."""
    if resume and not (out / CHECKPOINT).is_file():
        raise ConfigError(f"--resume: no checkpoint at {out / CHECKPOINT}; run without --resume to start")
    fresh_noise = run.client.dp_noise_multiplier is not None and run.client.dp_noise_seed is None
    if resume and run.update is None and fresh_noise:
        raise ConfigError(
            "--resume: this simulated DP-SGD client draws fresh noise on every run (client.dp_noise_seed"
            " is null), so its update is not the checkpoint's: start afresh, or fix client.dp_noise_seed "
            "(or attack a saved update, scripts/share_update.py) to make a run resumable"
        )
    return resume


def run_identity(cfg: InvertConfig, update_sha256: str) -> str:
    """The sha256 of what determines a run's attack: the resolved config and the update's content.

    ``out`` and ``data.root`` (where files are, not what they hold) are left out, so a moved or
    renamed run directory still resumes; so are the memory checks (they decide whether a run starts, not
    what it computes). The update's digest covers a swapped update file.
    """
    return record_digest(
        cfg, ignore=("out", "data.root", "client.memory_check", "attack.memory_check"), update=update_sha256
    )


def _check_saved_config(path: Path, cfg: InvertConfig, update_sha256: str) -> None:
    """Refuse to resume unless ``path`` (the ``config.yaml`` beside the checkpoint) records this run's config.

    Compared as the run's identity (:func:`run_identity`): where files are (``out``, ``data.root``) may differ.
    """
    what = "start afresh without --resume (the earlier files are moved to previous/)"
    if not path.is_file():
        raise ConfigError(f"--resume: {path} is missing, so the checkpoint's run cannot be checked; {what}")
    try:
        saved = load_config(InvertConfig, path)  # the record the checkpoint's run wrote
    except ConfigError as err:
        raise ConfigError(f"--resume: {path} is not a readable config ({err}); {what}") from None
    if run_identity(saved, update_sha256) != run_identity(cfg, update_sha256):
        raise ConfigError(
            f"--resume: {path} records another config than this run's (edited, or another run's): "
            f"resume with the config it records, or {what}"
        )


def _attacked_model_config(run: InvertConfig, model: ClassifierModel) -> InvertConfig:
    """``run`` with the ``model`` group of ``model``, the model a saved update names (the config's own model group
    is not used then): what config.yaml and results.json record, and what the run's identity covers."""
    spec = {field.name: model.config.get(field.name, field.default) for field in dataclasses.fields(ModelConfig)}
    return dataclasses.replace(run, model=ModelConfig(**spec))


def _saved_update(run: InvertConfig, path: str) -> tuple[SharedUpdate, PrivateBatch | None, ClassifierModel]:
    """The saved update at ``path`` (``run.update``), its private batch if given, and the server's model for it."""
    update = SharedUpdate.load(path)
    private = PrivateBatch.load(run.private) if run.private else None
    if private is not None:
        private.check_matches(update)
    model_cfg: ModelConfig = run.model
    if update.meta.model is not None:
        model = model_from_update(update, weights=model_cfg.weights)
    else:  # an architecture of your own: the config's model group, shaped by the update's public metadata
        if update.meta.input_shape is None:
            raise ConfigError("the update names no model and no input shape: attack it from Python with your model")
        if model_cfg.num_classes is None:
            raise ConfigError("the update names no model: give model.num_classes (and model=..., model.weights=...)")
        model = build_from_model_config(model_cfg, update.meta.input_shape, model_cfg.num_classes)
        check_model(update, model)
    return update, private, model


def run_inversion(
    run: InvertConfig, *, resume: bool = False, progress: bool = True, lpips_metric: LPIPSMetric | None = None
) -> InversionRun:
    """Get the update (simulated or saved), choose labels, invert it, score it, write the run directory.

    Args:
        run: the resolved config (:func:`inversion.config.load_config`).
        resume: continue from ``out/checkpoint.pt`` (the same run: its ``config.yaml`` is checked).
        progress: show a progress bar.
        lpips_metric: the LPIPS metric to score with (default: one loaded from the data root).

    Writes into ``run.out``: ``config.yaml``, ``checkpoint.pt`` (every ``attack.checkpoint_every``
    steps), ``results.json``, ``reconstruction.pt`` (the images and labels), ``reconstruction.png``
    and, with a private batch, ``grid.png`` (true images above their matched reconstructions);
    with ``attack.snapshot_every``, ``snapshots.png``.
    """
    settings = run.attack
    try:
        device = resolve_device(settings.device)
    except ValueError as err:
        raise ConfigError(str(err), "attack.device") from None
    out = check_out(run.out)
    resuming = _check_resume(out, resume, run)
    update, private, model, client = _client(run, progress, device)
    if run.update is not None and update.meta.model is not None:
        run = _attacked_model_config(run, model)
    # oracle: the true labels, which a saved update's config must give (private=), as its resolution checks
    true_labels = private.labels if settings.labels == "oracle" and private is not None else None
    aux: AuxiliaryData | None = None
    options: dict[str, Any] = {}
    if needs_auxiliary(settings.labels):
        aux = _auxiliary(run, client, private)
        options = {"missing_classes": str(run.aux.missing_classes)}
    try:
        plan = plan_labels(settings.labels, update, model, true_labels=true_labels, aux=aux, **options)
    except ValueError as err:
        if aux is None:
            raise
        raise ConfigError(f"labels={settings.labels}: {err}") from None
    digest = update.sha256  # hashes every gradient: once per run
    known = {} if settings.local_order != "oracle" else {"local_orders": _private_orders(update, private)}
    inversion = get_attack(settings.method)(  # the attack: the one place it is built
        model,
        update,
        plan,
        settings,
        priors=dict(run.priors),
        device=device,
        identity=run_identity(run, digest),
        **known,
    )
    with run_folder(out, RUN_OUTPUTS, keep=resuming):
        note = (
            ""
            if run.update is None
            else (
                f"# attacked a saved update ({run.update}): the data and client "
                "sections were not used; the model came from the update's metadata\n"
            )
        )
        if resuming:
            try:
                inversion.load_checkpoint(out / CHECKPOINT)
            except ValueError as err:
                raise ConfigError(f"--resume: {err}") from None
            _check_saved_config(out / "config.yaml", run, digest)
            log.info("resuming from %s", out / CHECKPOINT)
        write_yaml_record(run, out / "config.yaml", header=note)
        with attack_threads(model, inversion.shape[1:], plan.batch_size, device):  # one for a small problem
            result = inversion.run(
                progress=progress,
                monitor=_psnr_monitor(update, private),
                monitor_every=settings.monitor_every,
                checkpoint=out / CHECKPOINT,
                checkpoint_every=settings.checkpoint_every,
                snapshot_every=settings.snapshot_every,
            )
            inversion.save_checkpoint(out / CHECKPOINT)
            scores = None
            if private is not None:
                metric = lpips_metric if lpips_metric is not None else LPIPSMetric(run.data.root or default_data_root())
                scores = evaluate_reconstruction(result.images, private.images, update.meta.denormalize, lpips=metric)
            results = _results(run, update, digest, private, plan, result, scores, device)
        save_record(
            out / "reconstruction.pt",
            RECONSTRUCTION_FORMAT,
            1,
            {"label_mode": plan.mode, "update_sha256": digest, "matching_loss": result.loss},
            {"images": result.images, "labels": torch.as_tensor(result.labels, dtype=torch.int64)},
        )
        _pictures(out, update, private, result, scores, plan.mode)
        with atomic_write(out / "results.json") as handle:  # last: its presence says the run finished
            handle.write(json.dumps(results, indent=1).encode())
    return InversionRun(update, private, model, result, plan, results, out)


def _client(
    run: InvertConfig, progress: bool, device: torch.device
) -> tuple[SharedUpdate, PrivateBatch | None, ClassifierModel, ClientRun | None]:
    """The attacked update, the private batch (None when not given), the server's model and the simulated
    client (None for a saved update); refuses, before the client runs or the labels are restored, an attack
    that would need more memory than ``device`` has free (:func:`~inversion.fl.simulate.check_attack_memory`)."""
    if run.update is not None:
        update, private, model = _saved_update(run, run.update)
        shape = update.meta.input_shape
        if update.batch_size is not None and shape is not None:
            check_attack_memory(
                footprint(model, shape),
                shape,
                update.batch_size,
                update.meta.local,
                run.attack,
                device,
                f"{update.display_name} (its K and local steps) needs a larger machine",
            )
        return update, private, model, None
    client = simulate_client(run, progress=progress, attack=run.attack, attack_device=device)
    return client.update, client.private, client.model, client


def _private_orders(update: SharedUpdate, private: PrivateBatch | None) -> torch.Tensor:
    """``attack.local_order=oracle``: the FedAvg client's private mini-batch orders (the identity of a client that
    does not shuffle); a one-line ConfigError where they are unknown."""
    local = update.meta.local
    if local is None:
        raise ConfigError(
            "oracle is for FedAvg updates (their local mini-batch orders); this one is FedSGD", "attack.local_order"
        )
    if private is None or (local.shuffle and "local_orders" not in private.record):
        raise ConfigError(
            "oracle needs the client's private orders of its shuffled mini-batches (its private batch record); "
            "use free or in_order",
            "attack.local_order",
        )
    k = int(private.labels.shape[0])
    return torch.as_tensor(private.record["local_orders"]) if local.shuffle else local.orders(k)


def _auxiliary(run: InvertConfig, client: ClientRun | None, private: PrivateBatch | None) -> AuxiliaryData:
    """The server's auxiliary set: from the simulated client's images without its batch, or from ``data``
    without the private batch's images (a saved update)."""
    if client is not None:
        return client_auxiliary(run.aux, client)
    exclude = () if private is None else private.record.get("indices", ())
    return auxiliary_from_config(run.aux, source_from_config(run.data), exclude)


def _psnr_monitor(update: SharedUpdate, private: PrivateBatch | None) -> Callable[[torch.Tensor], float] | None:
    """The progress bar's PSNR against the truth (display only: never fed back to the attack); None without it."""
    if private is None:
        return None
    truth01 = update.meta.denormalize(private.images).clamp(0, 1)

    def monitor(images: torch.Tensor) -> float:
        recon01 = update.meta.denormalize(images.detach().cpu()).clamp(0, 1)
        return float(psnr(truth01, recon01[match_images(recon01, truth01)]).clamp(max=PSNR_CAP_DB).mean())

    return monitor


#: What ``results.json`` records of a restoration's details: for one that read auxiliary data, the auxiliary set
#: used, the server's time (forward passes and FedAvg simulation included), the FedAvg first pass, classes without
#: auxiliary images; for every one, the noise estimate of the final layer's gradients (``noise``).
_SERVER_DETAILS = (
    "aux",
    "server_seconds",
    "first_pass_counts",
    "simulated_steps",
    "simulations",
    "misfit",
    "missing_classes",
    "solver",
    "noise",
)


def _present(counts: np.ndarray) -> dict[str, int]:
    return {str(c): int(n) for c, n in enumerate(counts) if n > 0}


def _results(
    run: InvertConfig,
    update: SharedUpdate,
    digest: str,
    private: PrivateBatch | None,
    plan: LabelPlan,
    result: InversionResult,
    scores: dict | None,
    device,
) -> dict[str, Any]:
    record = as_record(run)
    used = counts_from_labels(np.asarray(result.labels), plan.num_classes)
    truth = None if private is None else counts_from_labels(private.labels.numpy(), plan.num_classes)
    restoration = None
    if plan.restoration is not None:
        restoration = {
            "method": plan.restoration.method,
            "seconds": plan.restoration.seconds,
            "counts": _present(np.asarray(plan.restoration.counts)),
            "raw_metrics": None if truth is None else label_metrics(plan.restoration.raw_counts, truth),
            "diagnostics": list(plan.restoration.diagnostics),  # the input looked inconsistent: counts unreliable
            **{key: plan.restoration.details[key] for key in _SERVER_DETAILS if key in plan.restoration.details},
        }
    attack = {
        "matching_loss": result.loss,
        "best_restart": result.restart,
        "restart_losses": result.restart_losses,
        "steps": result.steps,
        "seconds": result.seconds,
        "steps_per_second": result.steps / result.seconds if result.seconds > 0 else None,
        "interrupted": result.interrupted,
        "span": result.span,
    }
    if isinstance(result, DisaggregationResult):  # what it verified, and its route: plain data (its record())
        attack["disaggregation"] = result.disaggregation
    return {
        "config": record,
        "device": str(device),
        # the attack's (inversion.attack.threads): CPU results are bit-reproducible for it
        "threads": torch.get_num_threads(),
        "update": {
            "sha256": digest,
            "kind": update.kind,
            "batch_size": update.batch_size,
            "local": None if update.meta.local is None else update.meta.local.to_json(),
            "file": record["update"],
            "dataset": update.meta.dataset,
            "notes": update.meta.notes,
        },
        "private": None
        if private is None
        else {"file": record["private"], "data_source": private.record.get("data_source")},
        "label_mode": plan.mode,
        "labels_used": [int(v) for v in result.labels],
        "label_counts": _present(used),
        "restoration": restoration,
        "true_labels": None if private is None else sorted(int(v) for v in private.labels),
        "label_metrics": None if truth is None else label_metrics(used, truth),
        "image_metrics": scores,
        "attack": attack,
    }


def _pictures(
    out: Path,
    update: SharedUpdate,
    private: PrivateBatch | None,
    result: InversionResult,
    scores: dict | None,
    mode: str,
) -> None:
    """reconstruction.png; with the private batch grid.png; with snapshots snapshots.png."""
    recon01 = update.meta.denormalize(result.images).clamp(0, 1)
    save_image_rows(
        [recon01],
        out / "reconstruction.png",
        row_names=["reconstructed"],
        captions=[[f"label {int(y)}" for y in result.labels]],
        title=f"labels: {mode}; matching loss {result.loss:.4g}",
    )
    if private is None or scores is None:  # scores come with the private batch
        if result.snapshots:
            rows = [update.meta.denormalize(images).clamp(0, 1) for _, _, images in result.snapshots]
            names = [f"r{restart} step {step}" for restart, step, _ in result.snapshots]
            save_image_rows(rows, out / "snapshots.png", row_names=names)
        return
    permutation = np.asarray(scores["permutation"])
    truth01 = update.meta.denormalize(private.images).clamp(0, 1)
    captions = [
        [f"class {int(y)}" for y in private.labels],
        [f"{image['psnr']:.1f} dB" for image in scores["per_image"]],
    ]
    mean = scores["mean"]
    title = f"labels: {mode} - PSNR {mean['psnr']:.2f} dB, SSIM {mean['ssim']:.3f}" + (
        f", LPIPS {mean['lpips']:.3f}" if mean["lpips"] is not None else ""
    )
    save_grid(truth01, recon01[permutation], out / "grid.png", captions=captions, title=title)
    if result.snapshots:
        rows = [truth01] + [
            update.meta.denormalize(images).clamp(0, 1)[permutation] for _, _, images in result.snapshots
        ]
        names = ["truth"] + [f"r{restart} step {step}" for restart, step, _ in result.snapshots]
        save_image_rows(rows, out / "snapshots.png", row_names=names)
