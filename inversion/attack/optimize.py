"""The gradient-inversion attack: optimise dummy inputs until their update matches the shared one.

The server's copy of the model computes, for a dummy batch ``x`` (K, C, H, W) and the
label plan, the update the client would have sent: for FedSGD the gradient of its loss
(mean cross-entropy); for FedAvg the weight delta of its local SGD steps, unrolled
differentiably on the dummies (Inverting Gradients' multi-step attack; the dummies fall into
the local mini-batches in the order of the plan's labels). The optimiser moves ``x`` (and
learnable labels) to minimise the matching objective plus the weighted image priors. Per restart: seeded initialisation, Adam (optionally on
the sign of the image gradient) or L-BFGS, an LR schedule driven by the step count,
projection onto the valid pixel box, the best iterate kept, early stop on a loss
threshold. The best restart is chosen by its matching loss.

The whole state (the current restart, the finished restarts' best losses and images, the
step count and the time spent) lives in plain tensors and numbers, so a checkpoint (written
atomically every N steps) resumes bit-identically on the CPU for a fixed thread count. With
``bn_mode="train"`` the model runs its batch-norm layers on the dummies' batch statistics, as the
client did, but their running statistics are frozen (momentum 0): they are what the ``bn`` prior
compares against, and must not drift towards the dummies' own statistics.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from priors import build_priors

from ..data.fileio import atomic_write, load_tensor_file
from ..fl.local import unroll_local_training
from ..fl.update import SharedUpdate
from .labels import LabelPlan, batch_loss, labels_in_use
from .objectives import GradientMatcher
from .settings import AttackSettings

__all__ = ["InversionResult", "Inversion", "lr_factor"]

CHECKPOINT_FORMAT = "gradleak.InversionCheckpoint"
CHECKPOINT_VERSION = 2
_CHECKPOINT_KEYS = {"identity": str, "generator": Tensor, "finished": list, "restart": int, "step": int,
                    "steps": int, "seconds": float}
_RESTART_KEYS = {"x": Tensor, "best_x": Tensor, "best_loss": float}


def _read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's payload, checked for format, version and completeness; ValueError names what is wrong."""
    payload = load_tensor_file(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an inversion checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is a version-{payload.get('version')} checkpoint; this version resumes only "
                         f"version {CHECKPOINT_VERSION}: start the run afresh")
    wanted = {**_CHECKPOINT_KEYS, **(_RESTART_KEYS if "x" in payload else {})}
    bad = [k for k, kind in wanted.items() if not isinstance(payload.get(k), kind)]
    if bad or ("x" not in payload and not payload["finished"]):
        raise ValueError(f"{path} is an incomplete checkpoint (missing or malformed: {', '.join(bad) or 'x'}): "
                         "start the run afresh")
    return payload


def lr_factor(schedule: str, step: int, max_steps: int) -> float:
    """Multiplier of the base LR at ``step``: ``step`` decays x0.1 at 3/8, 5/8 and 7/8 of the budget."""
    if schedule == "step":
        return 0.1 ** sum(step >= math.floor(max_steps * f) for f in (3 / 8, 5 / 8, 7 / 8))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / max_steps))
    return 1.0


@dataclass
class InversionResult:
    """What the attack returns.

    Attributes:
        images: the best reconstruction, normalised, (K, C, H, W), on the CPU.
        labels: the hard labels used/learned, (K,).
        loss: its matching loss.
        restart: the index of the restart it came from.
        restart_losses: the best matching loss of every restart run, in order (with Ctrl-C, the
            interrupted restart's best so far is the last entry).
        steps: optimisation steps run in total (all restarts, including those of earlier sessions
            when resumed from a checkpoint).
        seconds: wall time of the optimisation (all sessions).
        interrupted: True when stopped early by Ctrl-C.
        snapshots: (restart, step, images) kept every ``snapshot_every`` steps.
    """

    images: Tensor
    labels: Any
    loss: float
    restart: int
    restart_losses: list[float]
    steps: int
    seconds: float
    interrupted: bool = False
    snapshots: list[tuple[int, int, Tensor]] = field(default_factory=list)


def _select(names: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    if wanted is None:
        return list(names)
    chosen = [n for n in names if any(n == w or n.startswith(w + ".") for w in wanted)]
    if not chosen:
        raise ValueError(f"attack.parameters {list(wanted)} select none of the shared gradients ({list(names)[:5]}...)")
    return chosen


class Inversion:
    """One attack on one shared update.

    The attack works on its own copy of ``model`` (moved to ``device``): the caller's model is
    neither moved nor changed, and the hooks of the priors (``bn``) live on the copy and are
    removed when :meth:`run` returns. Only public data is read: the update's gradients and its
    metadata (input shape, normalisation, batch-norm mode); the batch size comes from the plan.

    Args:
        model: the server's copy of the model.
        update: the shared update.
        plan: the label plan (:func:`~inversion.attack.labels.plan_labels`).
        settings: the optimisation settings.
        bounds: (lower, upper) of valid normalised pixels, each broadcastable to (1, C, 1, 1);
            None: from the update's normalisation (:meth:`UpdateMeta.bounds`).
        image_shape: (C, H, W) of one input; None: the update's ``meta.input_shape``.
        priors: ``{name: weight}`` of the image priors (:func:`priors.build_priors`), or None.
        device: where to run.
        identity: the caller's name for this attack (e.g. a hash of its config), stored in every
            checkpoint; :meth:`load_checkpoint` refuses a checkpoint with another identity.
    """

    def __init__(
        self,
        model: nn.Module,
        update: SharedUpdate,
        plan: LabelPlan,
        settings: AttackSettings,
        *,
        bounds: tuple[Tensor, Tensor] | None = None,
        image_shape: Sequence[int] | None = None,
        priors: Mapping[str, float] | None = None,
        device: torch.device | str = "cpu",
        identity: str = "",
    ) -> None:
        self.device = torch.device(device)
        self.identity = identity
        self.model = copy.deepcopy(model).to(self.device)
        self.bn_mode = update.meta.bn_mode
        self.local = update.meta.local  # FedAvg: the client's local training, unrolled by match()
        if self.bn_mode == "train":  # batch statistics as the client had, running statistics frozen
            for layer in self.model.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.momentum = 0.0
        named = dict(self.model.named_parameters())
        self.names = _select([n for n in update.gradients if n in named], settings.parameters)
        self.params = [named[n].requires_grad_(True) for n in self.names]
        self.matcher = GradientMatcher(
            update.gradients, self.names, settings.objective, settings.layer_weights, self.device
        )
        self.plan, self.settings = plan, settings
        self.prior_weights = dict(priors or {})
        build_priors(self.prior_weights, model=self.model).remove()  # validate now; built again by run()
        self.priors = None
        image_shape = image_shape if image_shape is not None else update.meta.input_shape
        if image_shape is None:
            raise ValueError("the input shape is unknown: the update's metadata has no input_shape; pass image_shape")
        self.shape = (plan.batch_size, *image_shape)
        self.lower, self.upper = (b.to(self.device) for b in (bounds if bounds is not None else update.meta.bounds()))
        self.generator = torch.Generator().manual_seed(settings.seed)  # priors' randomness (augmentations)
        self.state: dict[str, Any] = {}
        self._optimizer_in_use: torch.optim.Optimizer | None = None
        self._session: tuple[float, float] | None = None  # (seconds before this run() call, its start time)

    # --- losses -------------------------------------------------------------------------------------
    def match(self, x: Tensor, label_logits: Tensor | None) -> Tensor:
        """Matching loss of the dummies' update (graph kept, to differentiate w.r.t. x).

        FedSGD: the gradient of the mean loss over the dummies. FedAvg: the weight delta of the
        client's local training unrolled on the dummies (:func:`~inversion.fl.local.unroll_local_training`).
        """
        if self.local is None:
            loss = batch_loss(self.model(x), self.plan, label_logits)
            return self.matcher(torch.autograd.grad(loss, self.params, create_graph=True))

        def loss(theta, rows):
            return batch_loss(functional_call(self.model, theta, (x[rows],)), self.plan, label_logits, rows)

        delta = unroll_local_training(self.model, self.local, self.plan.batch_size, loss)
        return self.matcher([delta[name] for name in self.names])

    def objective(self, x: Tensor, label_logits: Tensor | None) -> tuple[Tensor, Tensor, dict[str, float]]:
        """(total, matching loss, prior terms) for the current dummies."""
        matching = self.match(x, label_logits)
        if self.priors is None:
            return matching, matching, {}
        extra, terms = self.priors(x, match=lambda z: self.match(z, label_logits), generator=self.generator)
        return matching + extra, matching, terms

    # --- state ----------------------------------------------------------------------------------------
    def _fresh_restart(self, restart: int) -> dict[str, Any]:
        init_gen = torch.Generator().manual_seed(self.settings.seed * 1000 + restart)
        if self.settings.init == "randn":
            x = torch.randn(self.shape, generator=init_gen)
        elif self.settings.init == "rand":
            x = self.lower.cpu() + (self.upper - self.lower).cpu() * torch.rand(self.shape, generator=init_gen)
        else:
            x = torch.zeros(self.shape)
        logits = self.plan.initial_logits(init_gen)
        return {"restart": restart, "step": 0, "x": x, "label_logits": logits, "optimizer": None,
                "best_x": x.clone(), "best_loss": math.inf, "best_logits": logits}

    def _optimizer(self, x: Tensor, logits: Tensor | None) -> torch.optim.Optimizer:
        params = [x] if logits is None else [x, logits]
        if self.settings.optimizer == "lbfgs":
            return torch.optim.LBFGS(params, lr=self.settings.lr)
        return torch.optim.Adam(params, lr=self.settings.lr, fused=True)

    def checkpoint_payload(self) -> dict[str, Any]:
        """Everything needed to resume: plain tensors, numbers and lists (``weights_only`` loadable)."""
        state = {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in self.state.items()}
        state["seconds"] = self._seconds()
        if self._optimizer_in_use is not None:
            state["optimizer"] = self._optimizer_in_use.state_dict()
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "identity": self.identity, **state,
                "generator": self.generator.get_state()}

    def save_checkpoint(self, path: str | Path) -> None:
        """Write the resumable state atomically (temp file, then rename)."""
        with atomic_write(path) as handle:
            torch.save(self.checkpoint_payload(), handle)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore the state written by :meth:`save_checkpoint` (tensors and plain data only).

        Raises:
            ValueError: the file is unreadable (truncated, pickled objects), not a checkpoint of this
                version, incomplete, made by an attack with another ``identity``, or for another shape.
        """
        payload = _read_checkpoint(path)
        if payload["identity"] != self.identity:
            raise ValueError(f"checkpoint {path} was made by another attack (another config or update): "
                             "resume with the same config and update, or start afresh")
        dummies = payload["x"] if "x" in payload else payload["finished"][-1][2]  # after the last restart: no x
        if tuple(dummies.shape) != self.shape:
            raise ValueError(f"checkpoint {path} is for dummies of shape {tuple(dummies.shape)}, not {self.shape}")
        self.generator.set_state(payload.pop("generator"))
        for key in ("format", "version", "identity"):
            payload.pop(key)
        self.state = payload

    # --- the loop -------------------------------------------------------------------------------------
    def run(
        self,
        *,
        progress: bool = True,
        monitor: Callable[[Tensor], float] | None = None,
        monitor_every: int = 50,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 0,
        snapshot_every: int = 0,
    ) -> InversionResult:
        """Run (or continue, after :meth:`load_checkpoint`) all restarts.

        Args:
            progress: show a tqdm bar (step, loss and the ``monitor`` value).
            monitor: for the user's information only, e.g. the PSNR against the truth;
                called every ``monitor_every`` steps, never used by the optimisation.
            checkpoint, checkpoint_every: write the state to ``checkpoint`` every N steps.
            snapshot_every: keep a copy of the dummies every N steps (for pictures).

        Returns:
            the best restart's best iterate. Ctrl-C stops early and returns the best so far.
        """
        s, st = self.settings, self.state
        st.setdefault("finished", [])
        st.setdefault("steps", 0)
        st.setdefault("seconds", 0.0)
        first = st.get("restart", 0)
        snapshots: list[tuple[int, int, Tensor]] = []
        interrupted = False
        was_training = self.model.training
        self.model.train(self.bn_mode == "train")
        self.priors = build_priors(self.prior_weights, model=self.model) if self.prior_weights else None
        bar = tqdm(total=s.max_steps * s.restarts, desc="inversion", unit="step", disable=not progress)
        bar.update(first * s.max_steps + st.get("step", 0))
        self._session = (st["seconds"], time.perf_counter())
        try:
            for restart in range(first, s.restarts):
                if st.get("restart") != restart or "x" not in st:
                    st.update(self._fresh_restart(restart))
                self._run_restart(bar, monitor, monitor_every, checkpoint, checkpoint_every, snapshot_every,
                                  snapshots)
                st["finished"].append([restart, float(st["best_loss"]), st["best_x"], st["best_logits"]])
                st.update({"restart": restart + 1, "step": 0})
                st.pop("x", None)
        except KeyboardInterrupt:
            interrupted = True
            if self._optimizer_in_use is not None:  # keep the optimiser's state with the restart's, to resume
                st["optimizer"], self._optimizer_in_use = self._optimizer_in_use.state_dict(), None
        finally:
            bar.close()
            st["seconds"], self._session = self._seconds(), None
            if self.priors is not None:
                self.priors.remove()
                self.priors = None
            self.model.train(was_training)
        runs = list(st["finished"])
        if interrupted and "x" in st and math.isfinite(st["best_loss"]):  # the interrupted restart's best so far
            runs.append([st["restart"], float(st["best_loss"]), st["best_x"], st["best_logits"]])
        if not runs:
            raise KeyboardInterrupt("interrupted before the first step finished")
        restart, loss, best_x, best_logits = min(runs, key=lambda r: r[1])
        return InversionResult(
            images=best_x.detach().cpu(), labels=labels_in_use(self.plan, best_logits), loss=loss, restart=restart,
            restart_losses=[r[1] for r in runs], steps=st["steps"], seconds=st["seconds"], interrupted=interrupted,
            snapshots=snapshots,
        )

    def _seconds(self) -> float:
        """Time spent by the attack: earlier sessions' plus, while :meth:`run` runs, this one's so far."""
        if self._session is None:
            return self.state.get("seconds", 0.0)
        before, start = self._session
        return before + time.perf_counter() - start

    def _run_restart(self, bar, monitor, monitor_every, checkpoint, checkpoint_every, snapshot_every,
                     snapshots) -> None:
        s, st = self.settings, self.state
        x = st["x"].to(self.device).requires_grad_(True)
        logits = None if st["label_logits"] is None else st["label_logits"].to(self.device).requires_grad_(True)
        optimizer = self._optimizer(x, logits)
        if st["optimizer"] is not None:
            optimizer.load_state_dict(st["optimizer"])
        shown = {}
        self._optimizer_in_use = optimizer
        for step in range(st["step"], s.max_steps):
            for group in optimizer.param_groups:
                group["lr"] = s.lr * lr_factor(s.schedule, step, s.max_steps)
            matching = self._step(optimizer, x, logits)
            st.update({"step": step + 1, "steps": st["steps"] + 1, "x": x.detach(), "label_logits": None if logits is None else logits.detach()})
            if snapshot_every and (step + 1) % snapshot_every == 0:
                snapshots.append((st["restart"], step + 1, x.detach().cpu().clone()))
            if monitor is not None and (step % monitor_every == 0 or step + 1 == s.max_steps):
                shown["psnr"] = f"{monitor(st['best_x']):.2f}"
            if bar.disable is False:
                shown["loss"] = f"{matching:.4g}"
                bar.set_postfix(restart=st["restart"], **shown, refresh=False)
            bar.update(1)
            if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
                self.save_checkpoint(checkpoint)
            if s.stop_loss is not None and matching <= s.stop_loss:
                bar.update(s.max_steps - step - 1)
                break
        self._optimizer_in_use = None

    def _step(self, optimizer: torch.optim.Optimizer, x: Tensor, logits: Tensor | None) -> float:
        """One optimisation step; returns the matching loss of the iterate before the step.

        The iterate is copied as the restart's best when its matching loss is the lowest so far
        (checked at the first evaluation, before the optimiser moves it).
        """
        s, st = self.settings, self.state
        record: dict[str, float] = {}
        leaves = [x] if logits is None else [x, logits]

        def closure() -> Tensor:
            total, matching, _ = self.objective(x, logits)
            if not record:
                record["matching"] = float(matching.detach())
                if record["matching"] < st["best_loss"]:
                    st.update({"best_loss": record["matching"], "best_x": x.detach().cpu().clone(),
                               "best_logits": None if logits is None else logits.detach().cpu().clone()})
            # gradients w.r.t. the dummies only: not the (unused) second-order ones of the model's parameters
            for leaf, grad in zip(leaves, torch.autograd.grad(total, leaves)):
                leaf.grad = grad
            if s.signed:
                x.grad.sign_()
            return total.detach()

        if s.optimizer == "lbfgs":
            optimizer.step(closure)
        else:
            closure()
            optimizer.step()
        if s.boxed:
            with torch.no_grad():
                torch.maximum(torch.minimum(x, self.upper, out=x), self.lower, out=x)
        return record["matching"]
