"""Shared plumbing of the command-line scripts: argument parsing, logging, error reporting."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

__all__ = ["config_parser", "run_cli"]


def config_parser(description: str, default_config: str) -> argparse.ArgumentParser:
    """An argument parser with ``--config`` and free ``key=value`` / ``group=name`` overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_config, help=f"top-level YAML config (default: {default_config})")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="overrides, e.g. client.batch_size=16 model=resnet18 data=cifar100",
    )
    return parser


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's ``main`` with INFO logging; expected errors become one line and exit code 2."""
    from ..config import ConfigError
    from ..data import DataUnavailableError, PackError
    from ..evaluation import LPIPSWeightsError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except (ConfigError, DataUnavailableError, PackError, LPIPSWeightsError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
