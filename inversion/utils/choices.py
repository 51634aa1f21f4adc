"""Named choices that are also plain strings: one definition serves the configs and the library."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, TypeVar

from inversion.utils.errors import InputError

__all__ = ["Choice", "choices", "coerce"]


class Choice(str, enum.Enum):
    """An enum member that compares, hashes, formats and serialises as its string value.

    omegaconf validates a config field of such a type against its members (and says which are
    valid); library code can pass plain strings (see :func:`coerce`).
    """

    def __str__(self) -> str:
        return self.value

    def __format__(self, format_spec: str) -> str:
        return format(self.value, format_spec)


C = TypeVar("C", bound=Choice)


def choices(name: str, values: Sequence[str]) -> type[Choice]:
    """A :class:`Choice` type with one member per value (named as the value)."""
    return Choice(name, {v: v for v in values}, module=__name__)  # type: ignore[call-overload]  # enum's functional API


def coerce(kind: type[C], value: Any, what: str) -> C:
    """``value`` (a member or its string) as a member of ``kind``; ValueError naming the valid ones otherwise."""
    try:
        return kind(value)
    except ValueError:
        raise InputError(f"unknown {what} {value!r}; choose one of {', '.join(m.value for m in kind)}") from None
