"""Records: a typed config (or any dataclass) written down as plain data, its digest, and its YAML file.

A record is a JSON-ready nest of dicts, lists, strings, numbers, booleans and ``None``: what a run writes into
its files and hands to a sweep's workers. Values take the types their dataclass fields declare (omegaconf's
conversion: an ``int`` in a ``float`` field becomes a float), enum members become their names, paths strings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

from omegaconf import OmegaConf

from inversion.utils.fileio import atomic_write

__all__ = ["as_record", "record_digest", "write_yaml_record"]


def _plain(value: Any) -> Any:
    """``value`` with every path as its string and every tuple as a list, so that it serialises as JSON."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


def as_record(obj: Any) -> dict:
    """A plain, JSON-ready dict of ``obj``: a dataclass instance (nested dataclasses, lists, tuples, dicts,
    enums, paths) or a mapping (e.g. a record, which comes back as a new copy)."""
    container = OmegaConf.to_container(OmegaConf.structured(obj), resolve=True, enum_to_str=True)
    return _plain(container)


def record_digest(obj: Any, *, ignore: Sequence[str] = (), **extra: Any) -> str:
    """The sha256 of ``obj``'s record (:func:`as_record`) without the dotted keys ``ignore`` (e.g. where files
    are, not what a run computes), together with ``extra`` facts (e.g. the digest of the input a run reads).

    Raises:
        KeyError: a key of ``ignore`` is not in the record.
    """
    record = as_record(obj)
    for key in ignore:
        *path, last = key.split(".")
        node = record
        for part in path:
            node = node[part]
        node.pop(last)
    return hashlib.sha256(json.dumps({"config": record, **extra}, sort_keys=True).encode()).hexdigest()


def write_yaml_record(obj: Any, path: str | PurePath, *, header: str = "") -> None:
    """Write ``obj``'s record (:func:`as_record`) as YAML to ``path``, after ``header`` (comment lines), all or
    nothing (:func:`~inversion.utils.fileio.atomic_write`)."""
    with atomic_write(path) as handle:
        handle.write((header + OmegaConf.to_yaml(OmegaConf.create(as_record(obj)))).encode())
