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
        "overrides",
        nargs="*",
        metavar="key=value",
        help="overrides, e.g. client.batch_size=16 model=resnet18 data=cifar100",
    )
    return parser


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's ``main`` with INFO logging. A user error (:mod:`inversion.utils.errors`, a full disk
    too, and the input errors of :mod:`label_restore` and :mod:`priors`) becomes one line and exit code 2;
    Ctrl-C one line and exit code 130: also a Ctrl-C whose KeyboardInterrupt Python lost (see
    :mod:`inversion.utils.interrupts`), once ``main`` is done. Any other exception is a bug and keeps its
    traceback."""
    from inversion.utils.errors import UserError
    from inversion.utils.interrupts import watch_sigint
    from label_restore.errors import LabelRestoreInputError
    from priors.errors import PriorsInputError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        with watch_sigint() as interrupted:
            main()
            if interrupted():
                raise KeyboardInterrupt
    except (UserError, LabelRestoreInputError, PriorsInputError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as err:  # its message, if any, says what was kept
        reason = str(err)
        if reason and not reason.startswith("interrupted"):
            reason = f"interrupted: {reason}"
        print(reason or "interrupted", file=sys.stderr)
        sys.exit(130)
