"""The nonlinearities a model can be built with, by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from inversion.utils.errors import InputError

__all__ = ["ACTIVATIONS", "LEAKY_RELU_SLOPE", "make_activation"]

LEAKY_RELU_SLOPE = 0.01
"""Negative slope of ``"leaky_relu"`` (as in the iLRG experiments)."""

_FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE),
    "silu": nn.SiLU,  # Swish with beta = 1
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}

ACTIVATIONS: tuple[str, ...] = tuple(_FACTORIES)
"""Valid activation names, in documentation order."""


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module.

    Args:
        name: one of :data:`ACTIVATIONS`.

    Returns:
        A new, parameter-free module mapping a tensor of any shape to the same shape.

    Raises:
        ValueError: if ``name`` is not a known activation.
    """
    if name not in _FACTORIES:
        raise InputError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return _FACTORIES[name]()
