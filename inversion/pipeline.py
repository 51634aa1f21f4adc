"""The end-to-end attack behind ``scripts/invert.py``: client -> labels -> inversion -> evaluation -> files."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from label_restore import counts_from_labels, label_metrics
from priors import build_priors

from .attack import AttackSettings, Inversion, InversionResult, plan_labels
from .config import ConfigError, save_config, to_dict
from .data.fileio import atomic_write
from .data import default_data_root
from .evaluation import PSNR_CAP_DB, LPIPSMetric, evaluate_reconstruction, match_images, psnr, save_grid, unit_images
from .experiment import ClientRun, simulate_client
from .visualize import save_image_rows

__all__ = ["InversionRun", "run_inversion", "resolve_device"]

log = logging.getLogger("inversion.pipeline")

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("attack.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


@dataclass
class InversionRun:
    """Everything one run produced: the client, the attack's result and the scores."""

    client: ClientRun
    result: InversionResult
    results: dict[str, Any]
    out: Path


def _bounds(mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid normalised pixel range (lower, upper), each (1, C, 1, 1)."""
    return (0.0 - mean) / std, (1.0 - mean) / std


def _settings(attack: dict) -> AttackSettings:
    keys = ("objective", "layer_weights", "parameters", "optimizer", "lr", "signed", "boxed", "schedule",
            "max_steps", "restarts", "init", "stop_loss", "seed")
    try:
        return AttackSettings(**{k: attack[k] for k in keys})
    except ValueError as err:
        raise ConfigError(f"attack: {err}") from None


def _check_resume(out: Path, cfg: DictConfig, resume: bool) -> bool:
    """Whether to resume; refuses a checkpoint made with another config, or resuming without one."""
    checkpoint, saved = out / CHECKPOINT, out / "config.yaml"
    if not resume:
        return False
    if not checkpoint.is_file():
        raise ConfigError(f"--resume: no checkpoint at {checkpoint}; run without --resume to start")
    if saved.is_file() and to_dict(OmegaConf.load(saved)) != to_dict(cfg):
        raise ConfigError(f"--resume: the checkpoint in {out} was made with a different config ({saved}); "
                          "resume with the same options or choose another out")
    return True


def run_inversion(
    cfg: DictConfig, *, resume: bool = False, progress: bool = True, lpips_metric: LPIPSMetric | None = None
) -> InversionRun:
    """Simulate the client, restore/choose labels, invert the update, score it, write the run directory.

    Writes into ``cfg.out``: ``config.yaml``, ``checkpoint.pt`` (every ``attack.checkpoint_every``
    steps), ``results.json``, ``grid.png`` (true images above their matched reconstructions) and,
    with ``attack.snapshot_every``, ``snapshots.png``.
    """
    attack = to_dict(cfg.attack)
    settings = _settings(attack)
    if to_dict(cfg.client)["parameters"] != "all":
        raise ConfigError("inversion matches the full gradient: set client.parameters=all")
    device = resolve_device(attack["device"])
    out = Path(cfg.out)
    resuming = _check_resume(out, cfg, resume)
    run = simulate_client(cfg, progress=progress)
    update, model, spec = run.update, run.model, run.source.spec
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    plan = plan_labels(attack["labels"], update, model)
    try:
        image_priors = build_priors(to_dict(cfg.priors), model=model)
    except ValueError as err:
        raise ConfigError(f"priors: {err}") from None
    inversion = Inversion(model, update, plan, settings, bounds=_bounds(mean, std),
                          image_shape=tuple(update.truth.images.shape[1:]), priors=image_priors, device=device)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if resuming:
        inversion.load_checkpoint(out / CHECKPOINT)
        log.info("resuming from %s", out / CHECKPOINT)
    truth01 = unit_images(update.truth.images, spec.denormalize)

    def monitor(images: torch.Tensor) -> float:  # display only: never fed back to the attack
        recon01 = unit_images(images.detach().cpu(), spec.denormalize)
        return float(psnr(truth01, recon01[match_images(recon01, truth01)]).clamp(max=PSNR_CAP_DB).mean())

    result = inversion.run(
        progress=progress, monitor=monitor, monitor_every=attack["monitor_every"], checkpoint=out / CHECKPOINT,
        checkpoint_every=attack["checkpoint_every"], snapshot_every=attack["snapshot_every"],
    )
    inversion.save_checkpoint(out / CHECKPOINT)
    scores = evaluate_reconstruction(
        result.images, update.truth.images, spec.denormalize,
        lpips=lpips_metric if lpips_metric is not None else LPIPSMetric(to_dict(cfg.data)["root"] or default_data_root()),
    )
    results = _results(cfg, run, plan, result, scores, device)
    with atomic_write(out / "results.json") as handle:
        handle.write(json.dumps(results, indent=1).encode())
    _pictures(out, run, result, scores, truth01, spec, plan.mode)
    return InversionRun(run, result, results, out)


def _results(cfg, run: ClientRun, plan, result: InversionResult, scores: dict, device) -> dict[str, Any]:
    num_classes = plan.num_classes
    truth = counts_from_labels(run.update.truth.labels.numpy(), num_classes)
    used = counts_from_labels(np.asarray(result.labels), num_classes)
    restoration = None
    if plan.restoration is not None:
        restoration = {
            "method": plan.restoration.method,
            "seconds": plan.restoration.seconds,
            "raw_metrics": label_metrics(plan.restoration.raw_counts, truth),
        }
    return {
        "config": to_dict(cfg),
        "device": str(device),
        "data_source": run.batch.source,
        "label_mode": plan.mode,
        "labels_used": [int(v) for v in result.labels],
        "true_labels": sorted(int(v) for v in run.update.truth.labels),
        "label_metrics": label_metrics(used, truth),
        "restoration": restoration,
        "image_metrics": scores,
        "attack": {
            "matching_loss": result.loss,
            "best_restart": result.restart,
            "restart_losses": result.restart_losses,
            "steps": result.steps,
            "seconds": result.seconds,
            "steps_per_second": result.steps / result.seconds if result.seconds > 0 else None,
            "interrupted": result.interrupted,
        },
    }


def _pictures(out: Path, run: ClientRun, result: InversionResult, scores: dict, truth01, spec, mode: str) -> None:
    """grid.png (true above matched reconstructions) and, with snapshots, snapshots.png."""
    permutation = np.asarray(scores["permutation"])
    recon01 = unit_images(result.images, spec.denormalize)[permutation]
    captions = [[f"class {int(y)}" for y in run.update.truth.labels],
                [f"{image['psnr']:.1f} dB" for image in scores["per_image"]]]
    mean = scores["mean"]
    title = (f"labels: {mode} - PSNR {mean['psnr']:.2f} dB, SSIM {mean['ssim']:.3f}"
             + (f", LPIPS {mean['lpips']:.3f}" if mean["lpips"] is not None else ""))
    save_grid(truth01, recon01, out / "grid.png", captions=captions, title=title)
    if result.snapshots:
        rows = [truth01] + [unit_images(images, spec.denormalize)[permutation] for _, _, images in result.snapshots]
        names = ["truth"] + [f"r{restart} step {step}" for restart, step, _ in result.snapshots]
        save_image_rows(rows, out / "snapshots.png", row_names=names)
