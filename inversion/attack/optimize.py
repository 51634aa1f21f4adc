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

from inversion.attack.batched import BatchedMatch, batching_obstacle
from inversion.attack.conv import use_lean_convolutions
from inversion.attack.labels import LabelPlan, batch_loss, labels_in_use
from inversion.attack.objectives import GradientMatcher
from inversion.attack.settings import AttackSettings
from inversion.attack.span import FirstLayerSpan, span_for_update
from inversion.fl.local import unroll_local_training
from inversion.fl.update import SharedUpdate
from inversion.utils.fileio import atomic_write, load_tensor_file
from priors import build_priors

__all__ = ["Inversion", "InversionResult", "lr_factor"]

CHECKPOINT_FORMAT = "gradleak.InversionCheckpoint"
CHECKPOINT_VERSION = 2
_CHECKPOINT_KEYS = {
    "identity": str,
    "generator": Tensor,
    "finished": list,
    "restart": int,
    "step": int,
    "steps": int,
    "seconds": float,
}
_RESTART_KEYS = {"x": Tensor, "best_x": Tensor, "best_loss": float}
_BATCHED_KEYS = {"x": Tensor, "best_x": Tensor, "best_loss": Tensor, "done": Tensor}


def _read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's payload, checked for format, version and completeness; ValueError names what is wrong."""
    payload = load_tensor_file(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an inversion checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} is a version-{payload.get('version')} checkpoint; this version resumes only "
            f"version {CHECKPOINT_VERSION}: start the run afresh"
        )
    running = (_BATCHED_KEYS if payload.get("batched") else _RESTART_KEYS) if "x" in payload else {}
    wanted = {**_CHECKPOINT_KEYS, **running}
    bad = [k for k, kind in wanted.items() if not isinstance(payload.get(k), kind)]
    if bad or ("x" not in payload and not payload["finished"]):
        raise ValueError(
            f"{path} is an incomplete checkpoint (missing or malformed: {', '.join(bad) or 'x'}): start the run afresh"
        )
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
        span: the first-layer span constraint's record (layer, rank r, dimension D), None when not used.
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
    span: dict[str, Any] | None = None


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
    removed when :meth:`run` returns. On the CPU the copy's convolutions compute their double
    backward without the unused weight term (:mod:`inversion.attack.conv`; same results). Only
    public data is read: the update's gradients and its metadata (input shape, normalisation,
    batch-norm mode); the batch size comes from the plan.

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
        self.span: FirstLayerSpan | None = span_for_update(
            str(settings.span), self.model, update.gradients, plan.batch_size, image_shape
        )
        if self.span is not None:
            self.span.to(self.device)
        # what the optimiser moves: the dummies themselves, or their coefficients in the span (K, r)
        self.leaf_shape = self.shape if self.span is None else (plan.batch_size, self.span.rank)
        self.lower, self.upper = (b.to(self.device) for b in (bounds if bounds is not None else update.meta.bounds()))
        self.batched = self._batched_match() if settings.restarts > 1 else None
        if self.device.type == "cpu" and self.batched is None:  # measured faster on the CPU (see .conv)
            use_lean_convolutions(self.model)
        self.generator = torch.Generator().manual_seed(settings.seed)  # priors' randomness (augmentations)
        self.state: dict[str, Any] = {}
        self._optimizer_in_use: torch.optim.Optimizer | None = None
        self._session: tuple[float, float] | None = None  # (seconds before this run() call, its start time)

    def _batched_match(self) -> BatchedMatch | None:
        """The batched matching of all restarts where ``batch_restarts`` asks for it and it applies, else None."""
        mode = str(self.settings.batch_restarts)
        if mode == "never" or (mode == "auto" and self.device.type != "cuda"):
            return None
        obstacle = batching_obstacle(
            self.settings,
            self.plan,
            self.prior_weights,
            fedavg=self.local is not None,
            train_mode_batch_norm=self.bn_mode == "train"
            and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()),
        )
        if obstacle is None:
            return BatchedMatch(self.model, self.names, self.plan, self.matcher, self.settings.restarts)
        if mode == "always":
            raise ValueError(
                f"attack.batch_restarts=always: restarts cannot run batched with {obstacle}; "
                "set attack.batch_restarts=auto or never"
            )
        return None

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

    def images(self, leaf: Tensor) -> Tensor:
        """The dummies (K, C, H, W) of the optimised variable: itself, or its span coefficients (K, r) mapped."""
        return leaf if self.span is None else self.span(leaf)

    def _project(self, leaf: Tensor) -> None:
        """Boxed attacks: clamp the dummies to the pixel box; in the span, the span's nearest point to that."""
        with torch.no_grad():
            if self.span is None:
                torch.maximum(torch.minimum(leaf, self.upper, out=leaf), self.lower, out=leaf)
            else:
                leaf.copy_(
                    self.span.coefficients(torch.maximum(torch.minimum(self.span(leaf), self.upper), self.lower))
                )

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
        leaf = x if self.span is None else self.span.coefficients(x.to(self.device)).cpu()
        return {
            "restart": restart,
            "step": 0,
            "x": leaf,
            "label_logits": logits,
            "optimizer": None,
            "best_x": self.images(leaf.to(self.device)).cpu(),
            "best_loss": math.inf,
            "best_logits": logits,
        }

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
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "identity": self.identity,
            **state,
            "generator": self.generator.get_state(),
        }

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
            raise ValueError(
                f"checkpoint {path} was made by another attack (another config or update): "
                "resume with the same config and update, or start afresh"
            )
        if "x" in payload and bool(payload.get("batched")) != (self.batched is not None):
            how = "batched" if payload.get("batched") else "one after another"
            raise ValueError(
                f"checkpoint {path} ran its restarts {how}; resume with the same attack.batch_restarts "
                "on the same kind of device, or start afresh"
            )
        # the optimised variable(s), or after the last restart (no x) the last restart's best dummies
        leaf_shape = self.leaf_shape if self.batched is None else (self.settings.restarts, *self.leaf_shape)
        dummies, shape = (payload["x"], leaf_shape) if "x" in payload else (payload["finished"][-1][2], self.shape)
        if tuple(dummies.shape) != shape:
            raise ValueError(f"checkpoint {path} is for dummies of shape {tuple(dummies.shape)}, not {shape}")
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
        bar.update(first * s.max_steps + st.get("step", 0) * (s.restarts if st.get("batched") else 1))
        self._session = (st["seconds"], time.perf_counter())
        loop_args = (bar, monitor, monitor_every, checkpoint, checkpoint_every, snapshot_every, snapshots)
        try:
            if self.batched is not None and first < s.restarts:  # all restarts at once
                if "x" not in st:
                    st.update(self._fresh_batch())
                self._run_batched(*loop_args)
                self._close_restarts(s.restarts)
            for restart in range(first, s.restarts if self.batched is None else first):  # one after another
                if st.get("restart") != restart or "x" not in st:
                    st.update(self._fresh_restart(restart))
                self._run_restart(*loop_args)
                self._close_restarts(restart + 1)
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
        if interrupted and "x" in st:  # the interrupted restart's (or batch's) best so far
            runs += [run for run in self._finished_restarts() if math.isfinite(run[1])]
        if not runs:
            raise KeyboardInterrupt("interrupted before the first step finished")
        restart, loss, best_x, best_logits = min(runs, key=lambda r: r[1])
        return InversionResult(
            images=best_x.detach().cpu(),
            labels=labels_in_use(self.plan, best_logits),
            loss=loss,
            restart=restart,
            restart_losses=[r[1] for r in runs],
            steps=st["steps"],
            seconds=st["seconds"],
            interrupted=interrupted,
            snapshots=snapshots,
            span=None if self.span is None else self.span.record(),
        )

    def _close_restarts(self, following: int) -> None:
        """File the restart(s) just run among the finished ones; the next to run is ``following``."""
        self.state["finished"].extend(self._finished_restarts())
        self.state.update({"restart": following, "step": 0})
        self.state.pop("x", None)

    def _finished_restarts(self) -> list[list]:
        """[restart, best loss, best dummies, best label logits] of the restart(s) in ``state``."""
        st = self.state
        if not st.get("batched"):
            return [[st["restart"], float(st["best_loss"]), st["best_x"], st["best_logits"]]]
        return [[r, float(loss), st["best_x"][r].cpu(), None] for r, loss in enumerate(st["best_loss"].tolist())]

    def _fresh_batch(self) -> dict[str, Any]:
        """The state of all restarts at step 0, stacked: x (R, *leaf), best_x (R, K, C, H, W), best_loss (R,)."""
        fresh = [self._fresh_restart(r) for r in range(self.settings.restarts)]
        return {
            "batched": True,
            "restart": 0,
            "step": 0,
            "label_logits": None,
            "optimizer": None,
            "x": torch.stack([f["x"] for f in fresh]),
            "best_x": torch.stack([f["best_x"] for f in fresh]),
            "best_loss": torch.full((len(fresh),), math.inf),
            "done": torch.zeros(len(fresh), dtype=torch.bool),
            "best_logits": None,
        }

    def _run_batched(
        self, bar, monitor, monitor_every, checkpoint, checkpoint_every, snapshot_every, snapshots
    ) -> None:
        """All restarts at once (see :mod:`inversion.attack.batched`); a restart that reaches ``stop_loss`` is frozen."""
        s, st = self.settings, self.state
        x = st["x"].to(self.device).requires_grad_(True)
        for key in ("best_x", "best_loss", "done"):
            st[key] = st[key].to(self.device)
        optimizer = self._optimizer(x, None)
        if st["optimizer"] is not None:
            optimizer.load_state_dict(st["optimizer"])
        self._optimizer_in_use = optimizer
        restarts = s.restarts
        for step in range(st["step"], s.max_steps):
            for group in optimizer.param_groups:
                group["lr"] = s.lr * lr_factor(s.schedule, step, s.max_steps)
            matching = self._batched_step(optimizer, x)
            st.update({"step": step + 1, "steps": st["steps"] + restarts, "x": x.detach()})
            if snapshot_every and (step + 1) % snapshot_every == 0:
                images = self.images(x.detach()).cpu()
                snapshots.extend((r, step + 1, images[r].clone()) for r in range(restarts))
            shown = {}
            if monitor is not None and (step % monitor_every == 0 or step + 1 == s.max_steps):
                shown["psnr"] = f"{monitor(st['best_x'][int(st['best_loss'].argmin())].cpu()):.2f}"
            if bar.disable is False:
                bar.set_postfix(restarts=restarts, loss=f"{float(matching.min()):.4g}", **shown, refresh=False)
            bar.update(restarts)
            if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0:
                self.save_checkpoint(checkpoint)
            if s.stop_loss is not None and bool(st["done"].all()):
                bar.update((s.max_steps - step - 1) * restarts)
                break
        self._optimizer_in_use = None

    def _batched_step(self, optimizer: torch.optim.Optimizer, x: Tensor) -> Tensor:
        """One step of every restart; returns their matching losses (R,) before the step (best iterates kept)."""
        s, st = self.settings, self.state
        images = self.images(x)
        matching = self.batched(images)
        total = matching.sum()
        if self.priors is not None:  # tv and l2 only (batching_obstacle): batch means, so R x the mean over all R·K
            total = total + len(images) * self.priors(images.flatten(0, 1), generator=self.generator)[0]
        matching = matching.detach()
        better = matching < st["best_loss"]  # no boolean indexing: nothing here waits for the GPU
        st["best_loss"] = torch.where(better, matching, st["best_loss"])
        st["best_x"] = torch.where(better.view(-1, *[1] * len(self.shape)), images.detach(), st["best_x"])
        (grad,) = torch.autograd.grad(total, [x])
        x.grad = grad.contiguous()  # vmap's gradient may come back strided; fused Adam reads it as laid out like x
        if s.signed:
            x.grad.sign_()
        before = x.detach().clone() if s.stop_loss is not None else None
        optimizer.step()
        if s.boxed:
            self._project(x)
        if before is not None:  # a restart at or below stop_loss stays at that iterate
            st["done"] |= matching <= s.stop_loss
            with torch.no_grad():
                x.copy_(torch.where(st["done"].view(-1, *[1] * len(self.leaf_shape)), before, x))
        return matching

    def _seconds(self) -> float:
        """Time spent by the attack: earlier sessions' plus, while :meth:`run` runs, this one's so far."""
        if self._session is None:
            return self.state.get("seconds", 0.0)
        before, start = self._session
        return before + time.perf_counter() - start

    def _run_restart(
        self, bar, monitor, monitor_every, checkpoint, checkpoint_every, snapshot_every, snapshots
    ) -> None:
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
            st.update(
                {
                    "step": step + 1,
                    "steps": st["steps"] + 1,
                    "x": x.detach(),
                    "label_logits": None if logits is None else logits.detach(),
                }
            )
            if snapshot_every and (step + 1) % snapshot_every == 0:
                snapshots.append((st["restart"], step + 1, self.images(x.detach()).cpu().clone()))
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
            images = self.images(x)
            total, matching, _ = self.objective(images, logits)
            if not record:
                record["matching"] = float(matching.detach())
                if record["matching"] < st["best_loss"]:
                    st.update(
                        {
                            "best_loss": record["matching"],
                            "best_x": images.detach().cpu().clone(),
                            "best_logits": None if logits is None else logits.detach().cpu().clone(),
                        }
                    )
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
            self._project(x)
        return record["matching"]
