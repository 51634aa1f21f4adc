"""Safe, self-checking tensor files: ``torch.load(weights_only=True)`` plus a sha256 of the content.

Every file this package writes is a dict of tensors and plain data with a ``format`` name, a
``version`` and a ``sha256`` over its header and tensors (:func:`content_digest`). Loading refuses
pickled objects (they could run code), unknown formats and versions, and any content whose digest
differs from the stored one (a flipped byte, a hand-edited header).
"""
from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.fileio import atomic_write

__all__ = ["content_digest", "model_digest", "save_record", "load_record"]


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


def save_record(path: str | Path, fmt: str, version: int, header: Mapping[str, Any],
                tensors: Mapping[str, Tensor | None]) -> Path:
    """Write ``{format, version, header_json, tensors, sha256}`` atomically (temp file + rename)."""
    path = Path(path)
    tensors = {name: None if t is None else t.detach().cpu().contiguous() for name, t in tensors.items()}
    header_json = json.dumps(dict(header), sort_keys=True)
    payload = {"format": fmt, "version": version, "header_json": header_json, "tensors": tensors,
               "sha256": content_digest(json.loads(header_json), tensors)}
    with atomic_write(path) as handle:
        torch.save(payload, handle)
    return path


def load_record(path: str | Path, fmt: str, version: int, what: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read a file written by :func:`save_record`; returns (header, tensors) after checking the digest.

    Raises:
        FileNotFoundError: no such file.
        ValueError: pickled objects (refused), not a ``fmt`` file, another version, or a digest mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file at {path}")
    try:
        with warnings.catch_warnings():  # torch warns about legacy pickle protocols before refusing them
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects other than tensors and plain data; it is refused because unpickling "
            f"arbitrary objects can run code ({str(err).splitlines()[0]})"
        ) from None
    except Exception as err:  # truncated zip, bad magic number, ...: several types
        raise ValueError(f"{path} is not a readable torch file (truncated or corrupt?): {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise ValueError(f"{path} is not a {fmt} file ({what})")
    if payload.get("version") != version:
        raise ValueError(f"{path} is a {fmt} file of version {payload.get('version')}; this code reads version "
                         f"{version}: write it again with this version of gradleak")
    try:
        header, tensors, stored = json.loads(payload["header_json"]), payload["tensors"], payload["sha256"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is a damaged {fmt} file: {err}") from None
    if not isinstance(tensors, dict) or content_digest(header, tensors) != stored:
        raise ValueError(f"{path} fails its checksum: the file is corrupt or was edited after it was written")
    return header, tensors
