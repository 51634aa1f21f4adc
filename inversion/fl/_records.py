"""Safe, self-checking tensor files: ``torch.load(weights_only=True)`` plus a sha256 of the content.

Every file this package writes is a dict of tensors and plain data with a ``format`` name, a
``version`` and a ``sha256`` over its header and tensors (:func:`content_digest`). Loading (onto the
CPU, wherever the file was saved) refuses pickled objects (they could run code), unknown formats and
versions, a damaged structure, and any content whose digest differs from the stored one (a flipped
byte, a hand-edited header).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from inversion.utils.errors import InputError
from inversion.utils.fileio import atomic_write, load_tensor_file

__all__ = ["content_digest", "load_record", "model_digest", "save_record"]


def _tensor_bytes(tensor: Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


def content_digest(header: Mapping[str, Any], tensors: Mapping[str, Tensor | None]) -> str:
    """Hex sha256 of a JSON header and named tensors (name, dtype, shape and bytes, in name order)."""
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name in sorted(tensors):
        tensor = tensors[name]
        if tensor is None:
            digest.update(f"\0{name}:none".encode())
            continue
        digest.update(f"\0{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def model_digest(model: nn.Module) -> str:
    """Hex sha256 of a model's ``state_dict`` (parameters and buffers): which model state an update belongs to."""
    return content_digest({}, dict(model.state_dict()))


def save_record(
    path: str | Path, fmt: str, version: int, header: Mapping[str, Any], tensors: Mapping[str, Tensor | None]
) -> Path:
    """Write ``{format, version, header_json, tensors, sha256}`` atomically (temp file + rename)."""
    path = Path(path)
    tensors = {name: None if t is None else t.detach().cpu().contiguous() for name, t in tensors.items()}
    header_json = json.dumps(dict(header), sort_keys=True)
    payload = {
        "format": fmt,
        "version": version,
        "header_json": header_json,
        "tensors": tensors,
        "sha256": content_digest(json.loads(header_json), tensors),
    }
    with atomic_write(path) as handle:
        torch.save(payload, handle)
    return path


def _entries(path: Path, fmt: str, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor | None], Any]:
    """(header, tensors, stored digest) of a payload, checked for structure before any of it is used."""

    def damaged(problem: str) -> ValueError:
        return ValueError(f"{path} is a damaged {fmt} file: {problem}; write it again")

    missing = [key for key in ("header_json", "tensors", "sha256") if key not in payload]
    if missing:
        raise damaged(f"it has no {missing[0]!r} entry")
    try:
        header = json.loads(payload["header_json"])
    except (TypeError, ValueError) as err:
        raise damaged(f"its header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise damaged(f"its header is not a JSON object but a {type(header).__name__}")
    tensors = payload["tensors"]
    if not isinstance(tensors, dict):
        raise damaged(f"its tensors are a {type(tensors).__name__}, not a dict of tensors")
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise damaged(f"tensor name {name!r} is not a string")
        if tensor is None or (isinstance(tensor, Tensor) and tensor.layout == torch.strided):
            continue
        kind = f"{tensor.layout} tensor".removeprefix("torch.") if isinstance(tensor, Tensor) else type(tensor).__name__
        raise damaged(f"{name!r} is a {kind}, not a dense tensor")
    return header, tensors, payload["sha256"]


def load_record(path: str | Path, fmt: str, version: int, what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a file written by :func:`save_record` onto the CPU; returns (header, tensors) after checking the digest
    (the tensors are dense tensors or None, as stored: the record's own type checks which it needs).

    Raises:
        FileNotFoundError: no such file.
        ValueError: pickled objects (refused), not a readable torch file (truncated or corrupt), not a
            ``fmt`` file, another version, a damaged structure, or a digest mismatch; one line naming the file.
    """
    path = Path(path)
    payload = load_tensor_file(path, what)
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise InputError(f"{path} is not a {fmt} file ({what})")
    if payload.get("version") != version:
        raise InputError(
            f"{path} is a {fmt} file of version {payload.get('version')}; this code reads version "
            f"{version}: write it again with this version of gradleak"
        )
    header, tensors, stored = _entries(path, fmt, payload)
    if content_digest(header, tensors) != stored:
        raise InputError(f"{path} fails its checksum: the file is corrupt or was edited after it was written")
    return header, tensors
