"""The attacks by name: the pipeline builds the attack a config names, from the registry.

An attack is built as ``build(model, update, plan, settings, *, priors=..., device=..., identity=...,
bounds=..., image_shape=...)`` (the arguments of :class:`~inversion.attack.optimize.Inversion`) and is
an :class:`Attack`: it runs (:meth:`Attack.run`, as :meth:`Inversion.run
<inversion.attack.optimize.Inversion.run>`, returning an :class:`~inversion.attack.runner.InversionResult`
with dummies (K, C, H, W)), saves and loads its checkpoint, and tells the shape (K, C, H, W) of its
dummies. ``"gradient_matching"`` is :class:`~inversion.attack.optimize.Inversion`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from torch import Tensor

from inversion.attack.disaggregation_attack import DisaggregationAttack
from inversion.attack.optimize import Inversion
from inversion.attack.runner import InversionResult
from inversion.utils.errors import InputError

__all__ = ["Attack", "AttackBuilder", "attack_names", "get_attack", "register_attack", "unregister_attack"]


class Attack(Protocol):
    """What the pipeline uses of a built attack."""

    @property
    def shape(self) -> tuple[int, ...]: ...  # (K, C, H, W) of the dummies
    def run(
        self,
        *,
        progress: bool = True,
        monitor: Callable[[Tensor], float] | None = None,
        monitor_every: int = 50,
        checkpoint: str | Path | None = None,
        checkpoint_every: int = 0,
        snapshot_every: int = 0,
    ) -> InversionResult: ...
    def save_checkpoint(self, path: str | Path) -> None: ...
    def load_checkpoint(self, path: str | Path) -> None: ...


AttackBuilder = Callable[..., Attack]

_ATTACKS: dict[str, AttackBuilder] = {}


def register_attack(name: str, build: AttackBuilder, *, overwrite: bool = False) -> None:
    """Register the attack ``build`` makes under ``name``.

    Raises:
        ValueError: ``name`` is not a non-empty string or is registered already (pass ``overwrite=True``
            to replace it), or ``build`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"an attack's name must be a non-empty string; got {name!r}")
    if name in _ATTACKS and not overwrite:
        raise InputError(f"attack {name!r} is already registered; pass overwrite=True to replace it")
    if not callable(build):
        raise InputError(f"the builder of attack {name!r} must be callable; got {type(build).__name__}")
    _ATTACKS[name] = build


def unregister_attack(name: str) -> None:
    """Remove the attack registered as ``name`` (e.g. one registered for a test); ValueError if there is none."""
    get_attack(name)
    del _ATTACKS[name]


def attack_names() -> tuple[str, ...]:
    """The registered attacks' names, in registration order."""
    return tuple(_ATTACKS)


def get_attack(name: str) -> AttackBuilder:
    """The builder of the attack registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    if name not in _ATTACKS:
        raise InputError(f"unknown attack {name!r}; the attacks are {list(_ATTACKS)}")
    return _ATTACKS[name]


register_attack("gradient_matching", Inversion)
register_attack("disaggregation", DisaggregationAttack)
