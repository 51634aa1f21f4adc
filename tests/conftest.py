"""Shared fixtures. The torchvision compatibility shim is imported before anything else."""

# isort: off
import inversion._torchvision_compat  # noqa: F401  (first: lets torchvision/lpips import on CPU torch)

# isort: on
from pathlib import Path

import pytest
from _data import packs_root


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The data root with the registry packs cached (fetched once if missing); tests copy what they change."""
    return packs_root()
