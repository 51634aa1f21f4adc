"""Client-side defenses applied to the shared gradients before the server sees them.

The three defenses of the iLRG paper's robustness table (as in the GGL/iLRG code):

- ``noise:σ`` — additive Gaussian noise of standard deviation σ on every entry;
- ``clip:C`` — scale all gradients together so that their global L2 norm is at most C;
- ``sparsify:p`` — in each tensor, zero the entries whose magnitude is below the
  p-th percentile of its magnitudes (p in [0, 100)).

A defense is written as a short spec string (``"none"``, ``"noise:0.01"``,
``"clip:4"``, ``"sparsify:90"``) so that sweeps can list them; the spec is
recorded in the defended update's ``meta["defense"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from inversion.fl.update import SharedUpdate
from inversion.utils.errors import InputError

__all__ = ["DEFENSE_NAMES", "Defense", "apply_defense", "defend_update", "parse_defense"]

DEFENSE_NAMES = ("none", "noise", "clip", "sparsify")


@dataclass(frozen=True)
class Defense:
    """A parsed defense spec: its name and level (σ, C or p; 0 for ``none``)."""

    name: str
    level: float = 0.0

    @property
    def spec(self) -> str:
        return "none" if self.name == "none" else f"{self.name}:{self.level:g}"


def parse_defense(spec: str) -> Defense:
    """Parse ``"none"``, ``"noise:σ"``, ``"clip:C"`` or ``"sparsify:p"``.

    Raises:
        ValueError: unknown name, missing or invalid level.
    """
    name, _, level = str(spec).strip().partition(":")
    if name not in DEFENSE_NAMES:
        raise InputError(f"unknown defense {spec!r}; use one of none, noise:STD, clip:MAX_NORM, sparsify:PERCENTILE")
    if name == "none":
        if level:
            raise InputError(f"defense 'none' takes no level, got {spec!r}")
        return Defense("none")
    try:
        value = float(level)
    except ValueError:
        raise InputError(f"defense {spec!r} needs a number after the colon, e.g. {name}:0.01") from None
    if name == "noise" and not value >= 0:
        raise InputError(f"noise std must be >= 0, got {value}")
    if name == "clip" and not value > 0:
        raise InputError(f"clip norm must be > 0, got {value}")
    if name == "sparsify" and not 0 <= value < 100:
        raise InputError(f"sparsify percentile must be in [0, 100), got {value}")
    return Defense(name, value)


def apply_defense(
    gradients: dict[str, Tensor], defense: Defense | str, *, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Defended copies of the gradients (the inputs are not modified).

    Args:
        gradients: parameter name -> gradient.
        defense: a :class:`Defense` or its spec string.
        generator: random generator for ``noise`` (seed it for reproducible runs).

    Returns:
        name -> defended gradient, same shapes and dtypes.
    """
    defense = parse_defense(defense) if isinstance(defense, str) else defense
    if defense.name == "none":
        return {n: g.clone() for n, g in gradients.items()}
    if defense.name == "noise":
        return {
            n: g + defense.level * torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device)
            for n, g in gradients.items()
        }
    if defense.name == "clip":
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in gradients.values()]))
        scale = torch.clamp(defense.level / (total + 1e-6), max=1.0)
        return {n: g * scale for n, g in gradients.items()}
    out = {}
    for n, g in gradients.items():
        magnitude = g.abs()
        threshold = float(np.percentile(magnitude.detach().cpu().numpy(), defense.level))
        out[n] = torch.where(magnitude < threshold, torch.zeros_like(g), g)
    return out


def defend_update(update: SharedUpdate, defense: Defense | str, *, seed: int = 0) -> SharedUpdate:
    """The update as a client using ``defense`` would share it; ``meta.notes["defense"]`` records the spec."""
    defense = parse_defense(defense) if isinstance(defense, str) else defense
    generator = torch.Generator().manual_seed(seed)
    gradients = apply_defense(update.gradients, defense, generator=generator)
    notes = {**update.meta.notes, "defense": defense.spec, "defense_seed": seed}
    return replace(update, gradients=gradients, meta=replace(update.meta, notes=notes))
