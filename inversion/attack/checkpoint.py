"""The attack's checkpoint file: a flat dict of plain tensors, numbers and lists (``weights_only`` loadable).

Keys: ``format``, ``version``, ``identity`` (the caller's name for the attack), ``generator`` (the
priors' random state, a uint8 tensor), and the :class:`~inversion.attack.state.RunState`'s: ``finished``
(``[restart, loss, images (K, C, H, W), label logits]`` lists), ``restart``, ``step``, ``steps``,
``seconds``; while a restart runs also its :class:`~inversion.attack.state.RestartState` (``x``,
``label_logits``, ``optimizer``, ``best_x``, ``best_loss``, ``best_logits``), or, for batched restarts,
``batched: True`` and the :class:`~inversion.attack.state.BatchState` (``x`` (R, K, ...), ``best_x``,
``best_loss`` (R,), ``done`` (R,)). Written atomically (temp file, then rename).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from inversion.attack.state import RunState
from inversion.utils.errors import InputError
from inversion.utils.fileio import atomic_write, load_tensor_file

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "read_checkpoint", "write_checkpoint"]

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


def write_checkpoint(path: str | Path, state: RunState, *, identity: str, generator: torch.Generator) -> None:
    """Write ``state`` (and the attack's ``identity`` and random ``generator``) to ``path`` atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "identity": identity,
        **state.payload(),
        "generator": generator.get_state(),
    }
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def _checked_payload(path: str | Path) -> dict[str, Any]:
    """A checkpoint's payload, checked for format, version and completeness; ValueError names what is wrong."""
    payload = load_tensor_file(path, "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path} is not an inversion checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise InputError(
            f"{path} is a version-{payload.get('version')} checkpoint; this version resumes only "
            f"version {CHECKPOINT_VERSION}: start the run afresh"
        )
    running = (_BATCHED_KEYS if payload.get("batched") else _RESTART_KEYS) if "x" in payload else {}
    wanted = {**_CHECKPOINT_KEYS, **running}
    bad = [k for k, kind in wanted.items() if not isinstance(payload.get(k), kind)]
    if bad or ("x" not in payload and not payload["finished"]):
        raise InputError(
            f"{path} is an incomplete checkpoint (missing or malformed: {', '.join(bad) or 'x'}): start the run afresh"
        )
    return payload


def read_checkpoint(
    path: str | Path, *, identity: str, batched: bool, leaf_shape: Sequence[int], image_shape: Sequence[int]
) -> tuple[RunState, Tensor]:
    """The state and the generator's state written by :func:`write_checkpoint`, for an attack that fits it.

    Args:
        identity: the resuming attack's identity; batched: whether it runs its restarts batched.
        leaf_shape: the shape of its optimised variable (with batched restarts: (R, K, ...)).
        image_shape: the shape (K, C, H, W) of its dummies.

    Raises:
        ValueError: the file is unreadable (truncated, pickled objects), not a checkpoint of this
            version, incomplete, made by an attack with another ``identity``, run otherwise batched, or
            for another shape.
    """
    payload = _checked_payload(path)
    if payload["identity"] != identity:
        raise InputError(
            f"checkpoint {path} was made by another attack (another config or update): "
            "resume with the same config and update, or start afresh"
        )
    if "x" in payload and bool(payload.get("batched")) != batched:
        how = "batched" if payload.get("batched") else "one after another"
        raise InputError(
            f"checkpoint {path} ran its restarts {how}; resume with the same attack.batch_restarts "
            "on the same kind of device, or start afresh"
        )
    # the optimised variable(s), or after the last restart (no x) the last restart's best dummies
    dummies, shape = (payload["x"], leaf_shape) if "x" in payload else (payload["finished"][-1][2], image_shape)
    if tuple(dummies.shape) != tuple(shape):
        raise InputError(f"checkpoint {path} is for dummies of shape {tuple(dummies.shape)}, not {tuple(shape)}")
    return RunState.from_payload(payload), payload["generator"]
