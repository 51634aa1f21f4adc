"""A non-editable install: the wheel ships every config and the commands run from any directory."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from _data import REPO

COMMANDS = ("invert", "share-update", "restore-labels", "ablate", "demo", "fetch-data", "federate", "train")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    # built from a copy of the sources: setuptools' build/ folder would otherwise land in the checkout, and a stale
    # one there (modules since moved or deleted) would slip into the wheel
    source = tmp_path_factory.mktemp("source") / "gradleak"
    anywhere = shutil.ignore_patterns("*.egg-info", "__pycache__", ".*_cache")
    at_root = {".git", ".venv", "build", "dist", "data", "runs"}

    def skip(folder: str, names: list[str]) -> set[str]:
        return anywhere(folder, names) | (at_root & set(names) if Path(folder) == REPO else set())

    shutil.copytree(REPO, source, symlinks=True, ignore=skip)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(folder),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=folder,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    return next(folder.glob("gradleak-*.whl"))


def test_the_wheel_holds_every_config_and_the_commands(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"inversion/configs/{p.relative_to(REPO / 'configs').as_posix()}" for p in (REPO / "configs").rglob("*.yaml")
    }
    assert configs and configs <= names, sorted(configs - names)
    assert not {n for n in names if n.startswith(("tests/", "scripts/", "data/", "runs/"))}
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert all(f"gradleak-{command} = " in entry_points for command in COMMANDS)


@pytest.mark.slow
def test_the_installed_commands_run_from_any_directory(wheel, data_root, tmp_path):
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "GRADLEAK_DATA": str(data_root)}

    def command(name, *args):
        code = (
            f"import sys, inversion; assert inversion.__file__.startswith({str(target)!r}), inversion.__file__; "
            f"from inversion.cli.{name} import run; "
            f"sys.argv = ['gradleak-{name.replace('_', '-')}', *sys.argv[1:]]; run()"
        )
        return subprocess.run(
            [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=elsewhere, env=env
        )

    shared = command("share_update", "model=fcn3", "model.width=16", "client.batch_size=2", "data.download=false")
    assert shared.returncode == 0, shared.stderr[-2000:]
    attacked = command(
        "invert",
        "--config",
        "configs/invert/mnist_fcn3.yaml",
        "--update",
        "runs/share/update.pt",
        "attack.max_steps=3",
        "attack.restarts=1",
    )
    assert attacked.returncode == 0, attacked.stderr[-2000:]
    assert (elsewhere / "runs" / "invert" / "mnist_fcn3" / "reconstruction.pt").is_file()


def test_importing_the_library_has_no_side_effects():
    code = (
        "import matplotlib; matplotlib.use('svg'); import sys, inversion, inversion.experiments.invert, "
        "inversion.experiments.demo, "
        "inversion.experiments.ablate; import matplotlib as m; "
        "print(m.get_backend(), 'matplotlib.pyplot' in sys.modules, 'lpips' in sys.modules, 'flwr' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["svg", "False", "False", "False"]  # the notebook's backend is kept
