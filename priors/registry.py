"""The prior registry: every prior :func:`~priors.combine.build_priors` can build, by name.

A prior is registered with a builder and two facts the attack reads (:class:`PriorSpec`). The builder makes a
*built prior*: a callable

.. code-block:: python

    prior(x, *, match=None, generator=None) -> Tensor  # a scalar, differentiable w.r.t. x (B, C, H, W)

where ``match`` is the attack's gradient-matching loss of a batch and ``generator`` the source of any randomness
(both may be ignored); a built prior that holds resources (forward hooks) releases them in a ``remove()`` method.
Priors are evaluated in registration order (the built-ins :data:`PRIOR_NAMES` first, ``bn`` before ``augment``,
whose forwards replace the statistics ``bn`` reads), so a new prior that reads the model's most recent forward sees
``augment``'s. A new prior is one module with its function and a call of :func:`register_prior`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .errors import PriorsInputError

__all__ = ["PRIOR_NAMES", "Prior", "PriorSpec", "prior_names", "prior_spec", "register_prior", "unregister_prior"]

PRIOR_NAMES = ("tv", "l2", "bn", "augment")
"""The built-in priors' names, in the order they register themselves (and are evaluated)."""


class Prior(Protocol):
    """A built prior (see the module docstring)."""

    def __call__(
        self, x: Tensor, *, match: Callable[[Tensor], Tensor] | None = None, generator: torch.Generator | None = None
    ) -> Tensor: ...


@dataclass(frozen=True)
class PriorSpec:
    """A registered prior.

    Attributes:
        name: its registry name (the key of a config's ``priors`` section).
        build: makes the prior: ``build(model)`` if ``needs_model``, else ``build()``.
        needs_model: it reads the attacked model (e.g. hooks on its layers), so it needs ``model=``.
        batchable: its value is a mean over the images of ``x`` computed from ``x`` alone, so the attack may
            evaluate R stacked restarts as one batch of R·K images (R times that value is the sum of the R
            restarts' values); False for a prior that reads the model's forward or draws its own randomness.
    """

    name: str
    build: Callable[..., Prior]
    needs_model: bool = False
    batchable: bool = True


_REGISTRY: dict[str, PriorSpec] = {}


def register_prior(
    name: str,
    build: Callable[..., Prior],
    *,
    needs_model: bool = False,
    batchable: bool = True,
    overwrite: bool = False,
) -> None:
    """Register a prior under ``name`` (see :class:`PriorSpec` for the arguments).

    Raises:
        ValueError: ``name`` is not a non-empty string or exists (a built-in can never be replaced, another
            only with ``overwrite=True``), or ``build`` is not callable.

    Example:
        An L1 prior, the mean absolute pixel value:

        >>> import torch
        >>> def l1(x, *, match=None, generator=None):
        ...     return x.abs().mean()
        >>> register_prior("l1", lambda: l1)
        >>> prior_spec("l1").batchable, prior_names()[-1]
        (True, 'l1')
        >>> from priors import build_priors
        >>> total, terms = build_priors({"l1": 0.5, "l2": 0.0})(torch.full((2, 1, 2, 2), -3.0))
        >>> total.item(), terms
        (1.5, {'l1': 3.0})
        >>> register_prior("l1", lambda: l1)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        PriorsInputError: prior 'l1' is already registered; pass overwrite=True to replace it
        >>> unregister_prior("l1")
    """
    if not isinstance(name, str) or not name:
        raise PriorsInputError(f"a prior's name must be a non-empty string; got {name!r}")
    if name in _REGISTRY and (name in PRIOR_NAMES or not overwrite):
        fix = "it is built in: choose another name" if name in PRIOR_NAMES else "pass overwrite=True to replace it"
        raise PriorsInputError(f"prior {name!r} is already registered; {fix}")
    if not callable(build):
        raise PriorsInputError(f"the builder of prior {name!r} must be callable; got {type(build).__name__}")
    _REGISTRY[name] = PriorSpec(name, build, bool(needs_model), bool(batchable))


def unregister_prior(name: str) -> None:
    """Remove the registered prior ``name`` (e.g. one registered for a test).

    Raises:
        ValueError: ``name`` is built in or not registered.
    """
    if name in PRIOR_NAMES:
        raise PriorsInputError(f"prior {name!r} is built in and cannot be removed")
    prior_spec(name)
    del _REGISTRY[name]


def prior_spec(name: str) -> PriorSpec:
    """The registered prior ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).

    Example:
        >>> prior_spec("bn").needs_model, prior_spec("augment").batchable
        (True, False)
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise PriorsInputError(f"unknown prior {name!r}; the priors are {list(_REGISTRY)}")
    return _REGISTRY[name]


def prior_names() -> tuple[str, ...]:
    """The registered priors' names, in registration order (the built-ins first).

    Example:
        >>> prior_names()[:4]
        ('tv', 'l2', 'bn', 'augment')
    """
    return tuple(_REGISTRY)
