"""Let ``torchvision`` (and ``lpips``) import on CPU-only torch builds.

Some torchvision wheels are CUDA builds whose compiled extension ``torchvision/_C``
cannot be loaded next to a CPU build of torch. torchvision then still imports its
Python code, but its meta registrations look up the ``torchvision::nms`` operator
and ``import torchvision`` fails with ``operator torchvision::nms does not exist``.

This module is imported first by every package of the project (and by the test
suite). It tries to load the compiled extension exactly as torchvision would; only
when that fails does it define the schemas of ``torchvision::nms`` and
``torchvision::qnms`` (without kernels), which is all the pure-Python parts of
torchvision (models, datasets, transforms) need. Calling the detection operators
themselves then raises torch's "no kernel" error, which is the honest answer on
such an install. Where the extension loads, nothing is changed.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

__all__ = ["TORCHVISION_OPS_STUBBED"]

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _extension_path() -> str | None:
    """Path of torchvision's compiled ``_C`` extension, or None if torchvision is absent."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return None
    folder = os.path.dirname(spec.origin)
    for name in sorted(os.listdir(folder)):
        if name.startswith("_C.") and name.endswith((".so", ".pyd")):
            return os.path.join(folder, name)
    return None


def _stub_operators_if_needed() -> bool:
    """Define the operator schemas if the compiled extension cannot load; True if it did."""
    if "torchvision" in sys.modules:  # already imported successfully: nothing to mend
        return False
    path = _extension_path()
    if path is None:
        return False
    try:
        torch.ops.load_library(path)
        return False
    except (OSError, RuntimeError):
        pass
    try:
        torch.ops.torchvision.nms  # noqa: B018 - defined by someone else already
        return False
    except (AttributeError, RuntimeError):
        pass
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        library.define(schema)
    _LIBRARIES.append(library)  # keep the registration alive
    return True


_LIBRARIES: list = []
TORCHVISION_OPS_STUBBED: bool = _stub_operators_if_needed()
