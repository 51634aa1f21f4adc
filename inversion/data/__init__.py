"""Image data: dataset specs, sources of real images (torchvision files, downloads,
registry sample packs, own image folders), the pack cache, and client batch samplers."""

from __future__ import annotations

from inversion.data.batch import Batch, sample_batch, sample_synthetic_batch
from inversion.data.errors import DataRootError, DataUnavailableError, PackError
from inversion.data.folder import FolderSource
from inversion.data.image_source import ArraySource, ImageSource, SubsetSource
from inversion.data.packs import PACKS, PackInfo, ensure_pack
from inversion.data.samplers import SAMPLER_NAMES, sample_indices, synthetic_counts
from inversion.data.sources import default_data_root, load_source
from inversion.data.specs import DATASET_NAMES, SPECS, DatasetSpec

__all__ = [
    "DATASET_NAMES",
    "PACKS",
    "SAMPLER_NAMES",
    "SPECS",
    "ArraySource",
    "Batch",
    "DataRootError",
    "DataUnavailableError",
    "DatasetSpec",
    "FolderSource",
    "ImageSource",
    "PackError",
    "PackInfo",
    "SubsetSource",
    "default_data_root",
    "ensure_pack",
    "load_source",
    "sample_batch",
    "sample_indices",
    "sample_synthetic_batch",
    "synthetic_counts",
]
