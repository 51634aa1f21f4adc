"""Run directories: checked before any work, locked while written, an earlier run's files moved aside."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _data import REPO

from inversion.utils.rundir import LOCK_NAME, OutputFolderError, check_out, run_folder


def test_out_must_be_a_folder_that_can_be_made(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="is a file, not a folder"):
        check_out(tmp_path / "file")
    with pytest.raises(OutputFolderError, match="cannot create out=.*file is a file; choose another out"):
        check_out(tmp_path / "file" / "run")
    assert check_out(tmp_path / "new" / "run") == tmp_path / "new" / "run"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_an_unwritable_out_is_refused(tmp_path, monkeypatch):
    """(Simulated: the tests may run as root, whom permissions do not stop.)"""
    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path / "locked")
    with pytest.raises(OutputFolderError, match="out=.*locked is not writable: choose a folder you can write to"):
        check_out(tmp_path / "locked")
    with pytest.raises(OutputFolderError, match="cannot be created .*locked is not writable"):
        check_out(tmp_path / "locked" / "run")


def test_a_second_run_into_the_same_out_is_refused_while_the_first_holds_it(tmp_path):
    with (
        run_folder(tmp_path / "run", ["results.json"]),
        pytest.raises(OutputFolderError, match=f"another run \\(pid {os.getpid()}\\) is writing into"),
        run_folder(tmp_path / "run", ["results.json"]),
    ):
        pass
    with run_folder(tmp_path / "run", ["results.json"]):  # released when the first run ended
        pass
    assert list((tmp_path / "run").iterdir()) == []  # and the lock file is gone


def test_a_killed_run_does_not_leave_the_folder_locked(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from inversion.utils.rundir import run_folder\n"
            f"with run_folder({str(tmp_path / 'run')!r}, []):\n    print('held', flush=True); time.sleep(60)",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputFolderError, match=f"pid {holder.pid}"), run_folder(tmp_path / "run", []):
        pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    with run_folder(tmp_path / "run", []):  # the kernel dropped the dead process's lock
        assert (tmp_path / "run" / LOCK_NAME).read_text() == str(os.getpid())


def test_earlier_outputs_are_moved_aside_only_for_a_fresh_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("old")
    (out / "frames").mkdir()
    (out / "mine.txt").write_text("not an output")
    with run_folder(out, ["results.json", "frames", "grid.png"], keep=True):
        assert (out / "results.json").read_text() == "old"
    with run_folder(out, ["results.json", "frames", "grid.png"]):
        assert not (out / "results.json").exists() and not (out / "frames").exists()
        (out / "results.json").write_text("new")
    with run_folder(out, ["results.json"]):  # likely the same second: the move gets a folder of its own
        pass
    moved = sorted((out / "previous").iterdir())
    assert [sorted(p.name for p in folder.iterdir()) for folder in moved] == [
        ["frames", "results.json"],
        ["results.json"],
    ]
    assert sorted((folder / "results.json").read_text() for folder in moved) == ["new", "old"]
    assert (out / "mine.txt").read_text() == "not an output"


@pytest.mark.parametrize(
    "script,out_option",
    [
        ("invert.py", ["--out"]),
        ("share_update.py", []),
        ("demo.py", ["--out"]),
        ("ablate.py", []),
        ("train.py", []),
        ("restore_labels.py", []),
    ],
)
def test_every_script_refuses_a_file_as_out_in_one_line(tmp_path, script, out_option):
    target = tmp_path / "taken"
    target.write_text("keep me")
    argument = [*out_option, str(target)] if out_option else [f"out={target}"]
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *argument],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"error: out={target} is a file, not a folder: choose another out"]
    assert target.read_text() == "keep me"
