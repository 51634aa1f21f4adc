"""User errors: the scripts report them in one line with exit code 2; any other exception (a bug) keeps its
traceback."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from _data import REPO

from inversion.cli import run_cli
from inversion.data import DataRootError, DataUnavailableError, PackError
from inversion.evaluation import LPIPSWeightsError
from inversion.utils.errors import InputError, MissingFileError, UserError
from inversion.utils.fileio import DiskFullError
from inversion.utils.rundir import OutputFolderError
from label_restore.errors import LabelRestoreInputError
from priors.errors import PriorsInputError


def _raising(error: BaseException):
    def main() -> None:
        raise error

    return main


@pytest.mark.parametrize(
    "error",
    [
        InputError("client.batch_size must be positive"),
        MissingFileError("no weights file at w.pt"),
        OutputFolderError("out=x is a file, not a folder: choose another out"),
        DataUnavailableError("no mnist source: set GRADLEAK_DATA"),
        DataRootError("the data root x is a file"),
        PackError("the pack failed its checksum"),
        LPIPSWeightsError("no AlexNet weights"),
        DiskFullError(errno.ENOSPC, os.strerror(errno.ENOSPC), "results.json"),
        LabelRestoreInputError("batch_size must be positive"),
        PriorsInputError("unknown prior 'tvv'"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_user_error_is_one_line_and_exit_code_2(error, capsys):
    with pytest.raises(SystemExit) as exited:
        run_cli(_raising(error))
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"error: {error}\n"


@pytest.mark.parametrize(
    "error", [ValueError("a bug"), FileNotFoundError("a bug"), RuntimeError("a bug"), TypeError("a bug")]
)
def test_any_other_exception_is_not_taken_for_a_user_error(error, capsys):
    with pytest.raises(type(error)) as raised:
        run_cli(_raising(error))
    assert raised.value is error and capsys.readouterr().err == ""


def test_the_user_errors_are_still_the_builtin_errors_callers_catch():
    assert issubclass(InputError, ValueError) and issubclass(OutputFolderError, ValueError)
    assert issubclass(MissingFileError, FileNotFoundError)
    assert issubclass(DataRootError, OSError) and issubclass(DiskFullError, OSError)
    assert issubclass(PackError, RuntimeError) and issubclass(LPIPSWeightsError, RuntimeError)
    assert all(
        issubclass(kind, UserError)
        for kind in (InputError, MissingFileError, OutputFolderError, DataUnavailableError, PackError, DiskFullError)
    )
    full = DiskFullError(errno.ENOSPC, os.strerror(errno.ENOSPC), "results.json")
    assert full.errno == errno.ENOSPC and full.filename == "results.json"
    assert issubclass(LabelRestoreInputError, ValueError) and issubclass(PriorsInputError, ValueError)


BUG = """
from inversion.cli import run_cli

def main():
    raise ValueError("a bug deep inside")

run_cli(main)
"""


def test_a_script_shows_the_traceback_of_a_bug():
    """The end of a real script's run (the one-line user errors: test_rundir, e2e)."""
    done = subprocess.run([sys.executable, "-c", BUG], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.startswith("Traceback (most recent call last)")
    assert done.stderr.strip().endswith("ValueError: a bug deep inside") and "error: a bug" not in done.stderr
